"""Masked loss: product masks read from the dataset, downsampled to the latent grid, cached and mirrored with the
latents, weighting the loss; and a fixed product on random-noise backgrounds is learnt better with it.

The effect test trains builtin:tiny on 8 photos of one striped product on a fresh random-noise background each
(masks: the product) with and without the masked loss, same seed and steps, then measures the denoiser's error on
the product region of the training latents at fixed noise and timesteps (:func:`_region_errors`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import record_hashes, write_dataset
from training_helpers import quick

from brandtune.errors import TrainingError
from brandtune.settings import Settings
from brandtune.training import train
from brandtune.training.data import Example, load_mask, masks_key, read_dataset
from brandtune.training.loop import loss_weights

pytestmark = pytest.mark.usefixtures("torch_threads")

RES = 64
CAPTION = "a photo of acme bottle"


def _product_items(n: int = 8, seed: int = 0) -> list[tuple[np.ndarray, str, np.ndarray]]:
    """``n`` photos of the same red/blue striped product (16 x 28 px, fixed place) on fresh random noise."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((RES, RES), np.uint8)
    mask[18:46, 24:40] = 255
    yy = np.indices((28, 16))[0]
    patch = np.where((yy // 4 % 2)[..., None] == 1, [200, 60, 60], [60, 60, 200]).astype(np.uint8)
    items = []
    for _ in range(n):
        img = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        img[18:46, 24:40] = patch
        items.append((img, CAPTION, mask))
    return items


def _dataset(items: list) -> Path:
    return write_dataset(Settings.from_env().datasets_dir, "acme", items, RES)


def _region_errors(adapter: Path | None, items: list) -> tuple[float, float]:
    """The v-prediction error of base (+ adapter) on the items' VAE latent means, product region and background
    region, averaged over 10 timesteps (50..950) with fixed noise."""
    import torch
    import torch.nn.functional as F

    from brandtune.models import load_base_pipeline, resolve_base

    pipe = load_base_pipeline(resolve_base("builtin:tiny"))
    if adapter is not None:
        pipe.load_lora_weights(str(adapter))
    pixels = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 127.5 - 1 for i, _, _ in items])
    masks = torch.stack([torch.from_numpy(m).float()[None] / 255 for _, _, m in items])
    gen = torch.Generator().manual_seed(123)
    product, background = [], []
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        m = F.interpolate(masks, size=latents.shape[-2:], mode="area")
        ids = pipe.tokenizer(
            [CAPTION] * len(items), padding="max_length", max_length=pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        embeds = pipe.text_encoder(ids)[0]
        for t in range(50, 1000, 100):
            noise = torch.randn(latents.shape, generator=gen)
            ts = torch.full((len(items),), t)
            pred = pipe.unet(
                pipe.scheduler.add_noise(latents, noise, ts), ts, encoder_hidden_states=embeds
            ).sample
            se = ((pred - pipe.scheduler.get_velocity(latents, noise, ts)) ** 2).mean(1, keepdim=True)
            product.append(float((se * m).sum() / m.sum()))
            background.append(float((se * (1 - m)).sum() / (1 - m).sum()))
    return float(np.mean(product)), float(np.mean(background))


# Unit tests --------------------------------------------------------------------------------------------------------


def test_weights_average_one_and_weigh_background_less() -> None:
    import torch

    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1.0  # half product
    mask[1, :, 0, 0] = 1.0  # one cell of 16
    w = loss_weights(mask, 0.1)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))
    assert torch.allclose(w[:, :, 0, 0] / w[:, :, 3, 3], torch.tensor([[10.0], [10.0]]))
    # background weight 0 and an empty mask: that example weighs 1 everywhere rather than nothing (or NaN)
    empty = loss_weights(torch.zeros(1, 1, 4, 4), 0.0)
    assert torch.equal(empty, torch.ones(1, 1, 4, 4))
    # background weight 1 is exactly the plain loss (no weights at all), as is an example without a mask
    assert loss_weights(mask, 1.0) is None and loss_weights(None, 0.1) is None
    assert torch.equal(loss_weights(torch.ones(1, 1, 4, 4), 0.1), torch.ones(1, 1, 4, 4))


def test_mask_is_area_downsampled_and_mirrored_like_its_image(tmp_path: Path) -> None:
    from PIL import Image

    mask = np.zeros((RES, RES), np.uint8)
    mask[:, :16] = 255  # the left quarter
    mask[0:2, 32:34] = 255  # 4 pixels of the 4x4 cell at row 0, column 8
    Image.fromarray(mask, "L").save(tmp_path / "m.mask.png")
    Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(tmp_path / "m.png")
    ex = Example(tmp_path / "m.png", "x", RES, RES, tmp_path / "m.mask.png")
    grid = load_mask(ex, RES, False, (16, 16))
    assert grid.shape == (1, 1, 16, 16)
    assert (grid[0, 0, :, :4] == 1).all() and grid[0, 0, 0, 8] == pytest.approx(0.25)
    assert grid.sum() == pytest.approx(16 * 4 + 0.25)
    assert np.array_equal(load_mask(ex, RES, True, (16, 16)).numpy(), grid.flip(-1).numpy())
    # a photo without a mask weighs 1 everywhere
    assert (load_mask(Example(ex.file, "x", RES, RES), RES, False, (16, 16)) == 1).all()


def test_read_dataset_reads_and_checks_mask_file_names(tmp_path: Path) -> None:
    items = _product_items(2)
    folder = write_dataset(tmp_path, "acme", [items[0], (items[1][0], CAPTION, None)], RES)
    examples = read_dataset(folder)
    assert sorted(ex.mask is None for ex in examples) == [False, True]
    masked = next(ex for ex in examples if ex.mask)
    assert masked.mask.name == masked.file.name.replace(".png", ".mask.png") and masked.mask.is_file()
    meta = folder / "metadata.jsonl"
    text = meta.read_text()
    meta.write_text(text.replace(masked.mask.name, "../../elsewhere.mask.png"))
    with pytest.raises(TrainingError, match="outside the dataset folder"):
        read_dataset(folder)
    meta.write_text(text)
    masked.mask.unlink()
    with pytest.raises(TrainingError, match=r"mask .* is missing"):
        read_dataset(folder)


# Through train() -------------------------------------------------------------------------------------------------


def test_masks_are_cached_mirrored_and_keyed_by_their_bytes(tmp_path: Path) -> None:
    """The cache holds the masks (mirrored copies after the originals); a changed mask or masked_loss off is a
    new cache; masked_loss and background_weight enter the run identity only for a dataset with masks; prior
    preservation (class images weigh 1) trains with masks."""
    from PIL import Image
    from safetensors.torch import load_file

    from brandtune.config import TrainConfig
    from brandtune.models import resolve_base
    from brandtune.training.plan import run_identity

    items = _product_items(4, seed=1)
    for _, _, mask in items[:2]:
        mask[18:46, 24:30] = 0  # asymmetric masks, so mirroring shows
    folder = _dataset(items)
    cfg = {"max_train_steps": 1, "dataset": folder.name, "random_flip": True, "resolution": 32}
    cache = Settings.from_env().cache_dir / "latents"
    first = train(quick(tmp_path / "a", **cfg))
    assert not first.cache_hit and train(quick(tmp_path / "b", **cfg)).cache_hit
    newest = max(cache.glob("*.safetensors"), key=os.path.getmtime)
    stored = load_file(newest)["mask"]
    assert stored.shape == (8, 1, 8, 8)  # 4 examples and their mirrored copies, 32 px / 4
    assert np.array_equal(stored[4:].numpy(), stored[:4].flip(-1).numpy())
    assert 0 < float(stored[0].mean()) < 1
    # the same folder and fingerprint, one mask changed: a new cache
    examples = read_dataset(folder)
    before = masks_key(examples)
    Image.fromarray(np.full((RES, RES), 255, np.uint8), "L").save(examples[0].mask)
    assert masks_key(examples) != before
    with pytest.raises(TrainingError, match="changed after ingest"):  # a changed file is refused...
        read_dataset(folder)
    record_hashes(folder)  # ...unless its manifest records it (here: a hand-made dataset, re-recorded)
    assert not train(quick(tmp_path / "c", **cfg)).cache_hit
    off = train(quick(tmp_path / "d", **cfg, masked_loss=False))
    assert not off.cache_hit and "mask" not in load_file(max(cache.glob("*"), key=os.path.getmtime))
    # run identity: the masked-loss fields count only where they change the training
    resolved = resolve_base("builtin:tiny")
    base = TrainConfig(brand="acme").with_base_defaults(resolved.training_defaults)
    other = base.model_copy(update={"background_weight": 0.5})
    unmasked = base.model_copy(update={"masked_loss": False})
    same = [run_identity(c, "fp", resolved, 64, masks=False) for c in (base, other, unmasked)]
    assert len(set(same)) == 1
    assert run_identity(base, "fp", resolved, 64, masks=True) != run_identity(
        other, "fp", resolved, 64, masks=True
    )
    assert run_identity(unmasked, "fp", resolved, 64, masks=True) == run_identity(
        unmasked.model_copy(update={"background_weight": 0.5}), "fp", resolved, 64, masks=True
    )
    prior = train(quick(tmp_path / "e", **cfg, prior_preservation=True, num_class_images=2))
    assert np.isfinite(prior.final_loss)


def test_masked_training_learns_the_product_better_than_unmasked(tmp_path: Path) -> None:
    items = _product_items()
    folder = _dataset(items)
    common = {"dataset": folder.name, "max_train_steps": 40, "train_batch_size": 8, "learning_rate": 5e-3,
              "lr_warmup_steps": 0, "seed": 0}  # fmt: skip
    masked = train(quick(tmp_path / "masked", **common))  # the default background_weight
    plain = train(quick(tmp_path / "plain", **common, masked_loss=False))
    base_product, _ = _region_errors(None, items)
    masked_product, _ = _region_errors(masked.adapter_dir, items)
    plain_product, _ = _region_errors(plain.adapter_dir, items)
    assert plain_product < base_product  # both learn the product ...
    assert masked_product < 0.9 * plain_product, (
        base_product,
        plain_product,
        masked_product,
    )  # ... masked better


@pytest.mark.parametrize("base", [None, "builtin:tiny-flux", "builtin:tiny-sd3"], ids=["sd1", "flux", "sd3"])
def test_background_target_base_pulls_the_background_to_the_base_models_prediction(
    tmp_path: Path, base: str | None
) -> None:
    """With ``background_target: base`` the loss outside the product is the distance to the base model's own
    prediction: on an all-background photo the first step's loss is exactly 0 (the LoRA starts as a no-op), while
    the photo's backdrop gives a real loss; inside the product both targets are the photo. For every family: the
    masked loss works on the UNets' and the flow-matching transformers' predictions alike."""
    img, caption, _ = _product_items(1)[0]
    nothing = np.zeros((RES, RES), np.uint8)
    everything = np.full((RES, RES), 255, np.uint8)
    step = {"max_train_steps": 1, "train_batch_size": 2, "lr_warmup_steps": 0, "background_weight": 1.0}
    if base is not None:
        step["base_model"] = base
    losses = {}
    for name, mask in (("background", nothing), ("product", everything)):
        folder = write_dataset(Settings.from_env().datasets_dir, "acme", [(img, caption, mask)] * 2, RES)
        for target in ("base", "photo"):
            cfg = quick(tmp_path / f"{name}-{target}", dataset=folder.name, background_target=target, **step)
            run = train(cfg)
            losses[name, target] = run.final_loss
    assert losses["background", "base"] == 0.0
    assert losses["background", "photo"] > 0.01
    assert losses["product", "base"] == losses["product", "photo"] > 0.01
