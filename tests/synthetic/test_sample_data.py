"""The committed sample brand photos and bad-input fixtures are what scripts/make_sample_brand.py makes with
brandtune.synthetic, and what their names say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageOps

from brandtune.synthetic import SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[2]
PHOTOS_DIR = REPO_ROOT / "data" / "brands" / "acme" / "photos"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "bad"
IMAGE_SUFFIXES = {".jpg", ".png"}


@pytest.fixture(scope="module")
def make_sample_brand() -> ModuleType:
    """The script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "make_sample_brand", REPO_ROOT / "scripts" / "make_sample_brand.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "P") else "RGB"), dtype=np.float32)


def _assert_same_files(committed: Path, fresh: Path) -> None:
    names = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    for name in names:
        if name.suffix in IMAGE_SUFFIXES and "bomb" not in name.name and "truncated" not in name.name:
            try:
                old, new = _pixels(committed / name), _pixels(fresh / name)
            except OSError:  # not decodable on purpose: must then be byte-identical
                assert (committed / name).read_bytes() == (fresh / name).read_bytes(), name
                continue
            assert old.shape == new.shape, name
            # JPEG decoders differ by a level or two across library versions; the scenes must not.
            assert np.abs(old - new).mean() < 1.5, name
        elif name.suffix == ".txt":
            assert (committed / name).read_text() == (fresh / name).read_text(), name


def test_committed_photos_match_the_script(make_sample_brand: ModuleType, tmp_path: Path) -> None:
    make_sample_brand.write_photos(tmp_path)
    _assert_same_files(PHOTOS_DIR, tmp_path)


def test_sample_photos_are_what_the_brand_needs(make_sample_brand: ModuleType) -> None:
    """12 RGBA cutouts and 12 lifestyle shots in two settings, each shot with an upright mask of its size; the
    other four settings stay out of the photos (the demo's acceptance test uses them as unseen settings)."""
    images = sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix in IMAGE_SUFFIXES and ".mask" not in p.name)
    assert len(images) == 24
    kinds = [p.stem.split("_", 2)[2] for p in images]
    assert kinds.count("cutout") == 12
    assert set(kinds) == {"cutout", *make_sample_brand.LIFESTYLE_SETTINGS}
    assert len(set(SETTINGS) - set(kinds)) == 4
    assert sum(p.stat().st_size for p in PHOTOS_DIR.iterdir()) < 1.5 * 2**20
    rotated = 0
    for path in images:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(image)
            mode = image.mode
        rotated += orientation != 1
        short, long = sorted(upright.size)
        assert 256 <= short <= 384 and long / short <= 3 / 2 + 0.01, path
        if path.stem.endswith("cutout"):
            assert mode == "RGBA" and upright.width < upright.height, path
            alpha = np.asarray(upright.getchannel("A"))
            assert 0.02 < (alpha > 127).mean() < 0.5 and alpha[0].max() == 0, (
                path
            )  # product inside, clear border
            continue
        with Image.open(path.with_name(f"{path.stem}.mask.png")) as mask:
            assert mask.mode == "L" and mask.size == upright.size, path
            assert 0.02 < (np.asarray(mask) > 127).mean() < 0.5, path
        sidecar = path.with_suffix(".txt")
        if sidecar.exists():
            assert sidecar.read_text().startswith("a photo of acme bottle ")
    assert rotated >= 2
