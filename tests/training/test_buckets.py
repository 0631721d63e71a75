"""Aspect-ratio buckets: the buckets and which photo goes where, a portrait photo trained in a portrait bucket,
batches that never mix buckets, SDXL micro-conditioning from the real crop, and exact resume with buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import write_dataset
from training_helpers import kill_after_checkpoint, quick

from brandtune.settings import Settings
from brandtune.training import train
from brandtune.training.buckets import assign_buckets, bucket_sizes, crop_fraction, nearest_bucket
from brandtune.training.data import Example, _time_ids
from brandtune.training.loop import Batches

pytestmark = pytest.mark.usefixtures("torch_threads")


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A product (an orange box in the middle third) on a random-noise background, ``width`` x ``height``."""
    img = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = (242, 140, 40)
    return img


def _mixed_dataset() -> Path:
    """Two 2:3 portraits (52 x 78, ingest's keep-aspect size at 64 px), three squares and a 3:2 landscape; masks on
    some."""
    items = []
    for i, (w, h) in enumerate([(52, 78), (52, 78), (64, 64), (64, 64), (64, 64), (78, 52)]):
        mask = np.zeros((h, w), np.uint8)
        mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 255
        items.append((_photo(w, h, i), "a photo of acme bottle", mask if i % 2 == 0 else None))
    return write_dataset(Settings.from_env().datasets_dir, "acme", items, 64)


def test_buckets_and_where_a_portrait_goes() -> None:
    assert bucket_sizes(64, 16, 2.0) == [(48, 80), (48, 64), (64, 64), (64, 48), (80, 48)]
    assert nearest_bucket((48, 64), bucket_sizes(64, 16, 2.0)) == (48, 64)  # 3:4: no crop at all
    portrait = (52, 78)  # 2:3
    assert nearest_bucket(portrait, bucket_sizes(64, 16, 2.0)) == (48, 80)
    assert crop_fraction(portrait, (48, 80)) < 0.10  # at most 5% off each side, at this coarse 64 px grid
    assert nearest_bucket((64, 64), bucket_sizes(64, 16, 2.0)) == (64, 64)
    # at a real resolution the buckets are fine: a 2:3 photo loses under 2% of its width, none of its height
    buckets = bucket_sizes(1024, 16, 2.0)
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 1024**2 for w, h in buckets)
    chosen = nearest_bucket((836, 1254), buckets)
    assert chosen[0] < chosen[1] and crop_fraction((836, 1254), chosen) < 0.02
    assert max(w / h for w, h in buckets) <= 2.0 and min(w / h for w, h in buckets) >= 0.5


def test_assignment_reads_the_stored_size_and_buckets_off_is_the_square(tmp_path: Path) -> None:
    from PIL import Image

    files = []
    for i, (w, h) in enumerate([(52, 78), (64, 64), (78, 52)]):
        Image.fromarray(_photo(w, h, i)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    assert assign_buckets(files, 64, 16, 2.0) == [(48, 80), (64, 64), (80, 48)]
    assert assign_buckets(files, 64, 16, None) == [(64, 64)] * 3


def test_sdxl_time_ids_are_the_real_original_size_and_crop() -> None:
    # a 520 x 780 photo covering 48 x 80: scaled to 53.3 x 80, 2.67 px cut off each side
    assert _time_ids(Example(Path("x.png"), "x", 520, 780), (48, 80)) == [780, 520, 0, 3, 80, 48]
    # a square bucket of a square photo: no crop, as before buckets
    assert _time_ids(Example(Path("x.png"), "x", 64, 64), (64, 64)) == [64, 64, 0, 0, 64, 64]


def test_batches_stay_in_one_bucket_and_are_the_same_after_a_restart() -> None:
    sizes = [3, 5, 1]
    batches = Batches(sizes, 2, world=1, rank=0, seed=4)
    per_epoch = 2 + 3 + 1  # ceil(3/2) + ceil(5/2) + ceil(1/2)
    drawn = [batches.draw(m) for m in range(3 * per_epoch)]
    for bucket, idx in drawn:
        assert len(idx) == 2 and all(0 <= i < sizes[bucket] for i in idx)
    for epoch in range(3):
        seen = {(b, i) for b, idx in drawn[epoch * per_epoch : (epoch + 1) * per_epoch] for i in idx}
        assert seen == {(b, i) for b, n in enumerate(sizes) for i in range(n)}  # every example every epoch
    assert drawn[:per_epoch] != drawn[per_epoch : 2 * per_epoch]  # a new order each epoch
    fresh = Batches(sizes, 2, world=1, rank=0, seed=4)
    assert [fresh.draw(m) for m in reversed(range(3 * per_epoch))] == drawn[::-1]
    # two processes share the epoch's batches without overlap
    ranks = [Batches(sizes, 2, world=2, rank=r, seed=4) for r in (0, 1)]
    assert [ranks[m % 2].draw(m // 2) for m in range(per_epoch)] == drawn[:per_epoch]
    # one bucket: the batches of before buckets (one permutation per epoch, run through in order)
    single = Batches(5, 2, world=1, rank=0, seed=4)
    import torch

    flat = torch.cat([torch.randperm(5, generator=torch.Generator().manual_seed(4 + e)) for e in range(2)])
    assert [single.draw(m) for m in range(4)] == [(0, flat[2 * m : 2 * m + 2].tolist()) for m in range(4)]


def test_a_portrait_photo_trains_in_a_portrait_bucket_and_resume_is_exact(tmp_path: Path) -> None:
    """Mixed aspects, masks on some photos, flips, prior preservation off; killed after step 4 of 8."""
    from safetensors.torch import load_file

    folder = _mixed_dataset()
    common = {
        "dataset": folder.name, "max_train_steps": 8, "checkpointing_steps": 4, "train_batch_size": 2,
        "random_flip": True, "dropout": 0.1, "learning_rate": 5e-3,
    }  # fmt: skip
    reference = train(quick(tmp_path / "ref", **common))
    cache = Settings.from_env().cache_dir / "latents"
    tensors = max(cache.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    stored = load_file(tensors)
    # buckets in size order: 48x80 (2 portraits), 64x64 (3 squares), 80x48 (1 landscape); flipped copies doubled
    shapes = [(stored[f"{b}/latent_mean"].shape[0], *stored[f"{b}/latent_mean"].shape[2:]) for b in range(3)]
    assert shapes == [(4, 20, 12), (6, 16, 16), (2, 12, 20)]  # 80 / 4 rows, 48 / 4 columns for the portraits
    assert stored["0/mask"].shape == (4, 1, 20, 12)
    interrupted = quick(tmp_path / "killed", **common)
    kill_after_checkpoint(interrupted, tmp_path / "cfg.json", step=4)
    resumed = train(interrupted.model_copy(update={"resume": "latest"}))
    assert resumed.resumed_from == 4
    ref = load_file(reference.adapter_dir / "pytorch_lora_weights.safetensors")
    got = load_file(resumed.adapter_dir / "pytorch_lora_weights.safetensors")
    assert ref.keys() == got.keys() and all((ref[k] == got[k]).all() for k in ref)
    assert json.loads((reference.run_dir / "result.json").read_text())["final_loss"] == pytest.approx(
        resumed.final_loss, abs=0
    )
