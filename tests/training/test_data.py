"""brandtune.training.data: the latent cache is reused for the same dataset and not for a changed one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from training_helpers import quick

from brandtune.training import train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


@pytest.mark.parametrize("base", [None, "builtin:tiny-flux", "builtin:tiny-sd3"])
def test_latent_cache_reused_and_invalidated(tmp_path: Path, acme_dataset: Path, base: str | None) -> None:
    """For the UNet families and the flow-matching ones alike (FLUX, SD3: T5 and pooled CLIP embeddings cached)."""
    from PIL import Image

    from brandtune.config import load_brand
    from brandtune.ingest import ingest

    original = {"max_train_steps": 1, "resolution": 32, "dataset": acme_dataset.name, "base_model": base}
    first = train(quick(tmp_path / "a", **original))
    second = train(quick(tmp_path / "b", **original))
    assert not first.cache_hit and second.cache_hit
    # Change one image: a new dataset fingerprint, so the cache is not reused.
    photos = tmp_path / "photos"
    src = Path(__file__).resolve().parents[2] / "data" / "brands" / "acme" / "photos"
    shutil.copytree(src, photos)
    victim = sorted(photos.glob("*.png"))[0]
    arr = np.asarray(Image.open(victim).convert("RGB")).copy()
    arr[:20, :20] = 0
    Image.fromarray(arr).save(victim)
    changed = ingest(load_brand("acme"), photos, progress=False)
    third = train(
        quick(tmp_path / "c", max_train_steps=1, resolution=32, dataset=changed.fingerprint, base_model=base)
    )
    assert not third.cache_hit
    # Back to the original dataset: its cache is still there.
    fourth = train(quick(tmp_path / "d", **original))
    assert fourth.cache_hit


def _own_dataset(seed: int) -> str:
    """A small dataset of noise images no other test has (so its latent cache key is this test's alone)."""
    from dataset_helpers import write_dataset

    from brandtune.settings import Settings

    rng = np.random.default_rng(seed)
    items = [
        (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "a photo of acme bottle", None) for _ in range(4)
    ]
    return write_dataset(Settings.from_env().datasets_dir, "acme", items, 64).name


def _encoded(n: int = 3, rows: int | None = None):
    import torch

    from brandtune.training.data import Encoded

    return Encoded(
        torch.randn(n, 4, 4, 4),
        torch.rand(n, 4, 4, 4),
        {"prompt_embeds": torch.randn(rows or n, 7, 8)},
    )


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_keys", "wrong_rows", "other_count"])
def test_unusable_latent_cache_is_deleted_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from safetensors.torch import save_file

    from brandtune.training.data import CACHE_VERSION, read_cache, write_cache

    cache = tmp_path / "latents" / "key.safetensors"
    write_cache(cache, [_encoded()])
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left
    assert len(read_cache(cache, rows=3)[0]) == 3
    meta = {"brandtune.cache_version": str(CACHE_VERSION)}
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(b"\xff" * 64)
    elif damage == "wrong_keys":
        save_file({"latent_mean": torch.zeros(3, 4, 4, 4)}, cache, metadata=meta)
    elif damage == "wrong_rows":
        write_cache(cache, [_encoded(3, rows=2)])
    rows = 4 if damage == "other_count" else 3
    with caplog.at_level("WARNING", logger="brandtune.training"):
        assert read_cache(cache, rows=rows) is None
    assert str(cache) in caplog.text and "encoding again" in caplog.text
    assert not cache.exists()


def test_truncated_latent_cache_is_recomputed_by_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from brandtune.settings import Settings
    from brandtune.training.data import read_cache

    latents = Settings.from_env().cache_dir / "latents"
    before = set(latents.glob("*.safetensors")) if latents.is_dir() else set()
    opts = {"max_train_steps": 1, "resolution": 32, "dataset": _own_dataset(1701)}
    first = train(quick(tmp_path / "a", **opts))
    (cache,) = set(latents.glob("*.safetensors")) - before
    assert not first.cache_hit
    cache.write_bytes(
        cache.read_bytes()[:100]
    )  # a crash or a full disk left a stub (or someone truncated it)
    with caplog.at_level("WARNING", logger="brandtune.training"):
        second = train(quick(tmp_path / "b", **opts))
    assert not second.cache_hit and str(cache) in caplog.text
    assert read_cache(cache) is not None  # encoded again and written whole
    assert train(quick(tmp_path / "c", **opts)).cache_hit


def test_training_killed_while_writing_the_latent_cache_leaves_no_cache(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from brandtune.doctor import CHECKS
    from brandtune.settings import Settings
    from brandtune.training.data import TEMP_STALE_S, check_latent_cache, read_cache

    latents = Settings.from_env().cache_dir / "latents"
    before = set(latents.glob("*")) if latents.is_dir() else set()
    opts = {"max_train_steps": 1, "resolution": 32, "dataset": _own_dataset(1702)}
    cfg = quick(tmp_path / "killed", **opts)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    env = {**os.environ, "BRANDTUNE_FAULT": "training.latent_cache_written"}
    cmd = [sys.executable, "-m", "brandtune.training", "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = set(latents.glob("*")) - before
    assert [p.name.startswith(".tmp-") for p in left] == [True]  # the partial file never got the final name
    result = train(quick(tmp_path / "again", **opts))
    assert not result.cache_hit
    (tmp,) = left
    (cache,) = [p for p in set(latents.glob("*.safetensors")) - before if not p.name.startswith(".")]
    assert read_cache(cache) is not None
    # brandtune doctor: the dead process's temporary file, once it is old enough not to be a live write
    assert str(tmp) not in [f.subject for f in check_latent_cache(Settings.from_env())]
    old = time.time() - TEMP_STALE_S - 1
    os.utime(tmp, (old, old))
    cache.write_bytes(cache.read_bytes()[:-8])
    found = {f.subject: f for f in check_latent_cache(Settings.from_env(), fix=True)}
    assert found[str(tmp)].fixed and "temporary" in found[str(tmp)].problem and not tmp.exists()
    assert found[str(cache)].fixed and "truncated" in found[str(cache)].problem and not cache.exists()
    assert "brandtune.training.data:check_latent_cache" in CHECKS
