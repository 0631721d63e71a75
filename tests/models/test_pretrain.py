"""Tests of brandtune.models.pretrain with a few steps: a loadable folder, an MLflow run, the same bytes twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brandtune.config import PretrainConfig
from brandtune.errors import TrainingError
from brandtune.fsutil import sha256_file
from brandtune.models.pretrain import PROVENANCE_FILE, pretrain
from brandtune.models.pretrain_data import render_dataset, vary_caption
from brandtune.models.pretrain_stages import _random_crops, _weighted_l1, loss_weights
from brandtune.synthetic import random_scene

#: One thread, as pretraining uses: reruns are bit-identical.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_RUN = {
    "num_images": 160,
    "vae_steps": 2,
    "vae_batch_size": 4,
    "vae_crop": 16,
    "unet_steps": 2,
    "unet_batch_size": 4,
    "decoder_steps": 2,
    "warmup_steps": 1,
    "log_every": 1,
}


def test_captions_vary_but_always_name_kind_and_colour() -> None:
    rng = np.random.default_rng(0)
    scene = random_scene(rng)
    body = scene.product.body
    texts = {vary_caption(scene, (a, b, c)) for a in (0.1, 0.9) for b in (0.1, 0.9) for c in (0.1, 0.9)}
    assert len(texts) == 8
    assert all(f"{body} {scene.product.kind}" in t for t in texts)
    assert "a photo of a red mug on a beach".removeprefix("a photo of ") == "a red mug on a beach"


def test_render_dataset_is_deterministic_and_never_draws_acme() -> None:
    images, captions, masks = render_dataset(64, seed=3)
    again, captions_again, masks_again = render_dataset(64, seed=3)
    assert images.shape == (64, 3, 64, 64) and str(images.dtype) == "torch.uint8"
    assert masks.shape == (64, 64, 64) and str(masks.dtype) == "torch.uint8"
    assert bool((images == again).all()) and bool((masks == masks_again).all()) and captions == captions_again
    assert not any("acme" in c or "teal bottle with an orange cap" in c for c in captions)
    # every scene has a product, and it covers part of the frame, not all of it
    coverage = masks.float().mean(dim=(1, 2)) / 255
    assert bool((coverage > 0.02).all()) and bool((coverage < 0.6).all())


def test_loss_weights_favour_the_product_and_keep_mean_one() -> None:
    import torch

    masks = torch.zeros((2, 64, 64), dtype=torch.uint8)
    masks[0, 16:48, 24:40] = 255  # a product in the middle of the first image; none in the second
    weights = loss_weights(masks, 16, product_weight=4.0)
    assert weights.shape == (2, 1, 16, 16)
    torch.testing.assert_close(weights.mean(dim=(1, 2, 3)), torch.ones(2))
    assert float(weights[0, 0, 8, 8]) == pytest.approx(5 * float(weights[0, 0, 0, 0]))
    assert bool((weights[1] == 1).all())
    assert bool((loss_weights(masks, 16, product_weight=0.0) == 1).all())


def test_vae_crops_carry_their_masks_and_the_l1_favours_the_product() -> None:
    import torch

    images, _, masks = render_dataset(8, seed=5)
    gen = torch.Generator().manual_seed(0)
    crops, coverage = _random_crops(images, 8, 6, 32, gen, masks)
    assert crops.shape == (6, 3, 32, 32) and coverage.shape == (6, 1, 32, 32)
    # each mask crop is cut from the same place as its image crop: find it again by brute force
    for crop, cov in zip(crops, coverage, strict=True):
        found = [
            (i, y, x)
            for i in range(8)
            for y in range(0, 33, 4)
            for x in range(0, 33, 4)
            if torch.equal(((crop + 1) * 127.5).round().byte(), images[i, :, y : y + 32, x : x + 32])
        ]
        assert any(
            torch.equal((cov[0] * 255).round().byte(), masks[i, y : y + 32, x : x + 32]) for i, y, x in found
        )
    assert _random_crops(images, 8, 6, 32, torch.Generator().manual_seed(0))[1] is None

    target = torch.zeros((1, 3, 4, 4))
    cover = torch.zeros((1, 1, 4, 4))
    cover[..., :2, :2] = 1.0  # the product: a quarter of the pixels
    wrong_product, wrong_background = target.clone(), target.clone()
    wrong_product[..., :2, :2] = 1.0
    wrong_background[..., 2:, 2:] = 1.0
    # unweighted, both errors cost the same; weighted 8x, the product's costs 9x the background's
    assert float(_weighted_l1(wrong_product, target, cover, 0.0)) == float(
        _weighted_l1(wrong_background, target, cover, 0.0)
    )
    ratio = _weighted_l1(wrong_product, target, cover, 8.0) / _weighted_l1(
        wrong_background, target, cover, 8.0
    )
    assert float(ratio) == pytest.approx(9.0)
    assert float(_weighted_l1(target + 0.5, target, cover, 8.0)) == pytest.approx(0.5)  # mean weight 1


def test_pretrain_writes_a_plain_pipeline_and_an_mlflow_run(tmp_path: Path) -> None:
    import mlflow
    from diffusers import StableDiffusionPipeline

    from brandtune.settings import Settings

    dest = tmp_path / "tiny"
    result = pretrain(PretrainConfig(**TINY_RUN), dest)
    assert result.path == dest and result.mlflow_run_id
    provenance = json.loads((dest / PROVENANCE_FILE).read_text())
    assert provenance["config"]["seed"] == 0 and provenance["command"] == "brandtune base build-tiny"
    pipe = StableDiffusionPipeline.from_pretrained(dest)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.vae.config.scaling_factor != 0.18215, "scaling_factor is set from the latents"
    client = mlflow.MlflowClient(Settings.from_env().tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["brandtune.stage"] == "pretrain"
    assert {"vae/l1", "vae/psnr_db", "unet/loss", "decoder/l1", "decoder/psnr_db"} <= set(run.data.metrics)
    assert len(client.get_metric_history(result.mlflow_run_id, "unet/loss")) == TINY_RUN["unet_steps"]

    again = pretrain(PretrainConfig(**TINY_RUN, tracking=False), tmp_path / "again")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert sha256_file(dest / part) == sha256_file(again.path / part), f"{part} differs between reruns"
    with pytest.raises(TrainingError, match="exists"):
        pretrain(PretrainConfig(**TINY_RUN), dest)
