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
