"""brandtune.synthetic.render: the same scene gives the same pixels, every product fits its frame in its colour,
bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest

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
)


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
