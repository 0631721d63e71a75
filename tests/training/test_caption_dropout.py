"""Caption dropout: a share of the instance images trained on the empty caption, drawn after every existing draw of a
step, so that with it off (the default) the config hash, the batches and the adapter are what they were before.

The batch tests build a plan from hand-made encodings (no model) and call ``make_batch``; the training tests check
that the denoiser really saw the empty caption: with every row dropped, a dataset captioned "a photo of acme
bottle" trains exactly as the same photos captioned "" do, while without dropout the two captions train apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_helpers import write_dataset
from training_helpers import quick

from brandtune.config import TrainConfig
from brandtune.settings import Settings
from brandtune.training import train

pytestmark = pytest.mark.usefixtures("torch_threads")

RES = 32
CAPTION = "a photo of acme bottle"
N = 6  # instance examples of the hand-made plans
STEP = {"max_train_steps": 1, "resolution": RES, "lr_warmup_steps": 0, "learning_rate": 1e-3}


# make_batch on a hand-made plan ---------------------------------------------------------------------------------


def _encoded(n: int, offset: float) -> Any:
    """``n`` examples whose text tensors say which example they are (row i holds i + 1 + offset), with masks."""
    import torch

    from brandtune.training.data import Encoded

    marks = torch.arange(1, n + 1, dtype=torch.float32) + offset
    conditioning = {
        "prompt_embeds": marks.view(n, 1, 1).expand(n, 3, 5).clone(),
        "pooled_embeds": marks.view(n, 1).expand(n, 4).clone(),
        "input_ids": marks.long().view(n, 1, 1).expand(n, 1, 7).clone(),
        "time_ids": marks.view(n, 1).expand(n, 6).clone(),  # SDXL micro-conditioning: not text, never dropped
    }
    gen = torch.Generator().manual_seed(int(offset))
    return Encoded(
        torch.randn(n, 4, 4, 4, generator=gen),
        torch.rand(n, 4, 4, 4, generator=gen),
        conditioning,
        torch.rand(n, 1, 4, 4, generator=gen),
    )


def _plan(p: float, *, flip: bool = False, prior: bool = False) -> Any:
    import torch

    from brandtune.training.plan import TrainPlan

    cfg = TrainConfig(brand="acme", caption_dropout=p, random_flip=flip, train_batch_size=4, seed=3)
    encoded = _encoded(2 * N if flip else N, 0.0)
    if flip:  # mirrored copies after the originals: the same text
        for key in ("prompt_embeds", "pooled_embeds", "input_ids", "time_ids"):
            encoded.conditioning[key][N:] = encoded.conditioning[key][:N]
    empty = {"prompt_embeds": torch.zeros(1, 3, 5), "pooled_embeds": torch.zeros(1, 4)}
    empty["input_ids"] = torch.zeros(1, 1, 7, dtype=torch.long)
    plan = TrainPlan(cfg, None, None, Path("."), "fp", [], RES, Path("."), "hash")  # type: ignore[arg-type]
    plan.encoded = [encoded]
    plan.class_encoded = [_encoded(4, 100.0)] if prior else None
    plan.empty_conditioning = empty if p else None
    return plan


def _batches(plan: Any, steps: int = 8) -> list[tuple[dict, Any]]:
    import torch

    from brandtune.training.loop import Batches, make_batch

    batches, class_batches = Batches.for_plan(plan)
    return [make_batch(plan, batches, class_batches, m, torch.device("cpu")) for m in range(steps)]


def test_dropped_rows_hold_the_empty_caption_and_nothing_else_changes() -> None:
    import torch

    from brandtune.training.loop import step_generator

    plain = _batches(_plan(0.0, flip=True, prior=True))
    dropped = _batches(_plan(0.5, flip=True, prior=True))
    n_dropped = 0
    for m, ((off, off_gen), (on, on_gen)) in enumerate(zip(plain, dropped, strict=True)):
        n = on["n_instance"]
        assert n == 4 and len(on["prompt_embeds"]) == 8  # class rows concatenated after the instance rows
        # latents, masks and time_ids are the undropped batch's: the examples and flips are drawn as before
        for key in ("latent_mean", "latent_std", "mask", "time_ids"):
            assert torch.equal(on[key], off[key]), key
        # the drop draw comes after the flip draw, from the same generator
        gen = step_generator(3, m, 0)
        torch.rand(4, generator=gen)  # the flips
        drop = torch.rand(4, generator=gen) < 0.5
        assert torch.equal(on_gen.get_state(), gen.get_state())
        for key in ("prompt_embeds", "pooled_embeds", "input_ids"):
            rows = on[key][:n].flatten(1)
            assert torch.equal((rows == 0).all(1), drop), key  # the dropped rows hold the empty caption ...
            assert torch.equal(rows[~drop], off[key][:n].flatten(1)[~drop]), key  # ... the others their own
            assert torch.equal(on[key][n:], off[key][n:]) and (on[key][n:] > 100).all()  # class rows: never
        n_dropped += int(drop.sum())
        # off: the generator goes on exactly where it did before caption dropout existed (flips only)
        before = step_generator(3, m, 0)
        torch.rand(4, generator=before)
        assert torch.equal(off_gen.get_state(), before.get_state())
    assert 8 <= n_dropped <= 24  # about half of the 32 rows


def test_nearly_always_dropped_and_class_images_of_another_size() -> None:
    import torch

    plan = _plan(0.99, prior=True)
    plan.class_encoded[0].latent_mean = torch.zeros(4, 4, 8, 8)  # another size: a forward pass of their own
    plan.class_encoded[0].latent_std = torch.zeros(4, 4, 8, 8)
    plan.class_encoded[0].mask = None
    rows = 0
    for batch, _ in _batches(plan):
        assert (batch["prior"]["prompt_embeds"] > 100).all()
        rows += int((batch["prompt_embeds"] == 0).flatten(1).all(1).sum())
    assert rows >= 30  # of 32


def test_off_keeps_the_config_hash_and_on_changes_it() -> None:
    from brandtune.config.train import TrainingDefaults

    def ident(**fields: Any) -> dict:
        return TrainConfig(brand="acme", **fields).with_base_defaults(TrainingDefaults()).identity()

    assert "caption_dropout" not in ident() and ident(caption_dropout=0.0) == ident()
    assert ident(caption_dropout=0.1)["caption_dropout"] == 0.1
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="caption_dropout"):
            TrainConfig(brand="acme", caption_dropout=bad)


# Through train() -------------------------------------------------------------------------------------------------


def _items(caption: str) -> list[tuple[np.ndarray, str, np.ndarray]]:
    """Four photos of an orange box on random noise, with its mask."""
    rng = np.random.default_rng(0)
    mask = np.zeros((RES, RES), np.uint8)
    mask[8:24, 10:22] = 255
    items = []
    for _ in range(4):
        img = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        img[8:24, 10:22] = (242, 140, 40)
        items.append((img, caption, mask))
    return items


def _adapter(result: Any) -> dict:
    from safetensors.torch import load_file

    return load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")


def _all_dropped(p: float, seed: int) -> bool:
    """Whether the first step's four instance rows are all dropped (no flips: the drop is the first draw)."""
    import torch

    from brandtune.training.loop import step_generator

    return bool((torch.rand(4, generator=step_generator(seed, 0, 0)) < p).all())


def test_off_trains_the_identical_adapter(tmp_path: Path) -> None:
    import torch

    folder = write_dataset(Settings.from_env().datasets_dir, "acme", _items(CAPTION), RES)
    default = train(quick(tmp_path / "default", dataset=folder.name, **STEP))
    zero = train(quick(tmp_path / "zero", dataset=folder.name, caption_dropout=0.0, **STEP))
    assert zero.config_hash == default.config_hash and zero.final_loss == default.final_loss
    a, b = _adapter(default), _adapter(zero)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("base", [None, "builtin:tiny-flux"], ids=["sd1", "flux"])
def test_the_denoiser_trains_on_the_empty_caption(tmp_path: Path, base: str | None) -> None:
    """Masks and prior preservation on, every row dropped: the caption no longer matters (the same loss as photos
    captioned ""), while without dropout it does."""
    step = {**STEP, **({"base_model": base} if base else {})}
    if base is None:
        step.update(prior_preservation=True, num_class_images=2)
    seed = 0
    assert _all_dropped(0.99, seed)
    losses = {}
    for caption in (CAPTION, ""):
        folder = write_dataset(Settings.from_env().datasets_dir, "acme", _items(caption), RES)
        for p in (0.0, 0.99):
            cfg = quick(
                tmp_path / f"{caption or 'empty'}-{p}", dataset=folder.name, caption_dropout=p, **step
            )
            losses[caption, p] = train(cfg).final_loss
    assert np.isfinite(list(losses.values())).all()
    assert losses[CAPTION, 0.99] == pytest.approx(losses["", 0.99], rel=1e-5, abs=1e-7)
    assert losses[CAPTION, 0.0] != pytest.approx(losses["", 0.0], rel=1e-3)  # the caption matters when kept
