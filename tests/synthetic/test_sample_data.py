"""The committed sample brand photos and bad-input fixtures are what scripts/make_sample_brand.py makes with
brandtune.synthetic, and what their names say."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
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
    images = sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix in IMAGE_SUFFIXES)
    assert len(images) == 24
    assert {p.stem.split("_", 2)[2] for p in images} == set(SETTINGS)
    assert sum(p.stat().st_size for p in PHOTOS_DIR.iterdir()) < 1.5 * 2**20
    rotated = 0
    for path in images:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(image)
        rotated += orientation != 1
        short, long = sorted(upright.size)
        assert 256 <= short <= 384 and long / short <= 4 / 3 + 0.01, path
        sidecar = path.with_suffix(".txt")
        if sidecar.exists():
            assert sidecar.read_text().startswith("a photo of acme bottle ")
    assert rotated >= 2
    assert 10 <= sum(1 for p in PHOTOS_DIR.glob("*.txt")) <= 14


def test_committed_fixtures_match_the_script(make_sample_brand: ModuleType, tmp_path: Path) -> None:
    make_sample_brand.write_bad_fixtures(tmp_path)
    _assert_same_files(FIXTURES_DIR, tmp_path)


def test_fixtures_are_what_their_names_say() -> None:
    bad = FIXTURES_DIR
    assert sum(p.stat().st_size for p in bad.rglob("*") if p.is_file()) < 2**20
    assert len(list((bad / "good").iterdir())) == 6
    with pytest.raises(OSError):
        Image.open(bad / "not_an_image.jpg")
    with Image.open(bad / "corrupt.png") as image:  # identifies as a PNG, fails to decode
        assert image.format == "PNG" and image.size == (320, 320)
        with pytest.raises(OSError):
            image.load()
    with pytest.raises(OSError), Image.open(bad / "truncated.jpg") as image:
        image.load()
    modes = {"cmyk.jpg": "CMYK", "rgba.png": "RGBA", "palette.png": "P", "gray16.png": "I;16"}
    for name, mode in modes.items():
        with Image.open(bad / name) as image:
            assert image.mode == mode and min(image.size) >= 256, name
    with Image.open(bad / "tiny.png") as image:
        assert max(image.size) <= 32
    with Image.open(bad / "panorama.png") as image:
        assert image.width / image.height >= 6
    with Image.open(bad / "animated.gif") as image:
        assert image.n_frames == 3 and min(image.size) >= 256
    with Image.open(bad / "rgba.png") as image:
        assert image.getchannel("A").getextrema() == (0, 255)
    assert (bad / "duplicate_of_studio.png").read_bytes() == (bad / "good" / "studio.png").read_bytes()
    near, original = _pixels(bad / "near_duplicate_of_forest.jpg"), _pixels(bad / "good" / "forest.png")
    assert near.shape == original.shape and 0 < np.abs(near - original).mean() < 12
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bad / "bomb.png")
    assert (bad / "bomb.png").stat().st_size < 200 * 1024
    with zipfile.ZipFile(bad / "zipslip.zip") as zf:
        infos = {i.filename: i for i in zf.infolist()}
    assert {"acme_ok.jpg", "../evil.png", "/abs/evil.png", "link.png"} <= set(infos)
    assert (infos["link.png"].external_attr >> 16) & 0o170000 == 0o120000  # a symlink entry
