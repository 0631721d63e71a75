"""brandtune.synthetic.scenes: captions name what is drawn; random scenes are deterministic and never the sample
brand's product."""

from __future__ import annotations

import numpy as np
import pytest

from brandtune.errors import ConfigError
from brandtune.synthetic import (
    ACME_PRODUCT,
    SETTINGS,
    ProductStyle,
    Scene,
    caption_for,
    colour_name,
    random_scene,
    resembles_acme,
)


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
