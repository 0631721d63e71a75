"""Tests for brandtune.synthetic and the committed sample brand / bad-input fixtures it makes."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageOps

from brandtune.errors import ConfigError
from brandtune.synthetic import (
    ACME_PRODUCT,
    COLOURS,
    KINDS,
    SETTINGS,
    ProductStyle,
    Scene,
    caption_for,
    colour_name,
    iter_samples,
    random_scene,
    render_scene,
    render_scene_with_mask,
    resembles_acme,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def _red_bottle(setting: str = "studio", seed: int = 1) -> Scene:
    return Scene(ProductStyle("bottle", "red", "white", "star", "yellow"), setting, seed)


def test_same_scene_renders_identical_pixels() -> None:
    scene = _red_bottle("beach", 42)
    for size in (64, (96, 64)):
        assert render_scene(scene, size).tobytes() == render_scene(scene, size).tobytes()


def test_different_seeds_differ() -> None:
    a, b = render_scene(_red_bottle("forest", 1)), render_scene(_red_bottle("forest", 2))
    assert a.tobytes() != b.tobytes()


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_kind_renders_fully_visible(setting: str) -> None:
    for kind in KINDS:
        scene = Scene(ProductStyle(kind, "blue", "yellow", "circle", "white"), setting, seed=7)
        for size in (64, 256, (48, 64), (64, 48)):
            image, mask = render_scene_with_mask(scene, size)
            want = (size, size) if isinstance(size, int) else size
            assert image.mode == "RGB" and image.size == want
            assert mask.shape == (want[1], want[0])
            assert mask.sum() > 0.04 * mask.size, f"{kind} in {setting} at {size} is too small"
            edges = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            assert edges.max() == 0, f"{kind} in {setting} at {size} touches the frame"


def test_random_layouts_stay_inside_the_frame() -> None:
    rng = np.random.default_rng(3)
    for _ in range(150):
        scene = random_scene(rng)
        for size in ((64, 48), (48, 64)):
            _, mask = render_scene_with_mask(scene, size, supersample=1)
            assert np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).max() == 0, scene


def test_caption_names_kind_colours_and_setting() -> None:
    scene = Scene(ProductStyle("mug", "orange", "white", "triangle", "black"), "snow", 0)
    assert (
        caption_for(scene) == "a photo of an orange mug with a white handle and a black triangle in the snow"
    )
    assert caption_for(scene, detail="short") == "a photo of an orange mug in the snow"
    assert caption_for(Scene(ACME_PRODUCT, "beach", 0)) == "a photo of acme bottle on a beach"
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng)
        text = caption_for(scene)
        assert scene.product.kind in text and SETTINGS[scene.setting] in text
        assert colour_name(scene.product.body) in text and colour_name(scene.product.accent) in text


def test_random_scene_never_draws_acme() -> None:
    rng = np.random.default_rng(12345)
    for _ in range(5000):
        scene = random_scene(rng)
        assert scene.product != ACME_PRODUCT
        assert not resembles_acme(scene.product)
        assert scene.product.accent != scene.product.body and scene.product.mark_colour != scene.product.body


def test_random_scene_is_deterministic_and_honours_exclude() -> None:
    a = [random_scene(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert random_scene(rng, exclude=lambda s: s.setting == "beach").setting != "beach"
    with pytest.raises(ConfigError, match="exclude"):
        random_scene(rng, exclude=lambda s: True)


@pytest.mark.parametrize("colour", ["red", "green", "blue", "yellow", "purple"])
def test_product_colour_is_the_body_colour(colour: str) -> None:
    for setting in ("studio", "beach", "kitchen"):  # lit scenes: at night a dim yellow is nearer orange
        scene = Scene(ProductStyle("can", colour, "white", "none", "white"), setting, seed=11)
        image, mask = render_scene_with_mask(scene, 128)
        pixels = np.asarray(image, dtype=np.float32)[mask > 0.99]
        assert len(pixels) > 500
        median = np.median(pixels, axis=0)
        assert colour_name("#{:02x}{:02x}{:02x}".format(*median.round().astype(int))) == colour, (
            setting,
            median,
        )
    if colour == "red":
        r, g, b = median
        assert r > g + 60 and r > b + 60


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="kind"):
        ProductStyle("vase", "red", "white")
    with pytest.raises(ConfigError, match="colour"):
        ProductStyle("can", "chartreuse", "white")
    with pytest.raises(ConfigError, match="setting"):
        Scene(ACME_PRODUCT, "moon", 0)
    with pytest.raises(ConfigError, match="size"):
        render_scene(_red_bottle(), 8)
    assert ProductStyle("can", "#1b9e9a", "white").body == "#1b9e9a"


def test_iter_samples() -> None:
    samples = list(iter_samples(5, seed=9, size=32))
    assert [s[1] for s in samples] == [s[1] for s in iter_samples(5, seed=9, size=32)]
    assert all(image.size == (32, 32) and caption == caption_for(scene) for image, caption, scene in samples)
    assert set(COLOURS) >= {colour_name(s[2].product.body) for s in samples}


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
