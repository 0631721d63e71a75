"""Weight-free metrics: expected orderings on crafted product images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from brandtune.errors import ConfigError
from brandtune.evaluation.metrics import (
    METRIC_DESCRIPTIONS,
    METRIC_DIRECTIONS,
    MetricInputError,
    Palette,
    ReferenceSet,
    TechnicalLimits,
    color_hist_distance,
    diversity,
    dominant_colours,
    palette_adherence,
    reference_similarity,
    score_image,
    score_set,
    technical_check,
)
from brandtune.synthetic import ACME_PRODUCT, ProductStyle, Scene, render_scene

PALETTE = ["#1fa6a0", "#f28c28"]
NEUTRAL = ["#f4efe3", "#ffffff"]
RED_CAN = ProductStyle("can", "red", "white")


def acme(setting: str = "beach", seed: int = 7, size: int = 64) -> Image.Image:
    return render_scene(Scene(ACME_PRODUCT, setting, seed), size)


@pytest.fixture(scope="module")
def references() -> ReferenceSet:
    return ReferenceSet.from_images(
        [acme(s, i) for s in ("beach", "snow", "studio", "kitchen") for i in range(3)]
    )


@pytest.mark.parametrize("setting", ["beach", "snow", "studio", "city"])
def test_on_palette_product_beats_off_palette(setting: str) -> None:
    pal = Palette.from_hex(PALETTE, NEUTRAL)
    on = palette_adherence(acme(setting), pal)
    off = palette_adherence(render_scene(Scene(RED_CAN, setting, 7), 64), pal)
    assert on.delta_e < off.delta_e - 5
    assert on.share > off.share
    assert len(on.per_colour) == 2
    assert on.dominant_weights.sum() == pytest.approx(1.0)


def test_snow_background_ignored_when_white_is_neutral() -> None:
    snow = acme("snow")
    with_neutral = palette_adherence(snow, PALETTE, NEUTRAL)
    without = palette_adherence(snow, PALETTE)
    assert with_neutral.share > without.share
    # The product is the same; with white neutral, the snow scene scores like the studio one.
    studio = palette_adherence(acme("studio"), PALETTE, NEUTRAL)
    assert abs(with_neutral.delta_e - studio.delta_e) < 5
    # An image that is only snow-white has no brand colour at all.
    white = np.full((64, 64, 3), 250, np.uint8)
    assert palette_adherence(white, PALETTE, NEUTRAL).share == 0.0


def test_palette_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="palette is empty"):
        Palette.from_hex([])
    with pytest.raises(ConfigError, match="not one of"):
        Palette.from_hex(["#12345"])
    with pytest.raises(ConfigError, match="inside the Palette"):
        palette_adherence(acme(), Palette.from_hex(PALETTE), NEUTRAL)


def test_dominant_colours_deterministic_and_small_inputs() -> None:
    lab = np.random.default_rng(0).normal(50, 20, (500, 3))
    a, wa = dominant_colours(lab, k=4, seed=3)
    b, wb = dominant_colours(lab, k=4, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(wa, wb)
    centres, weights = dominant_colours(np.array([[50.0, 10, 10]] * 3), k=8)
    assert centres.shape == (1, 3) and weights.tolist() == [1.0]


def test_reference_metrics_prefer_brand_photos(references: ReferenceSet) -> None:
    for setting in ("beach", "kitchen"):  # same setting, different product: only the product differs
        on, off = acme(setting, 99), render_scene(Scene(RED_CAN, setting, 99), 64)
        assert color_hist_distance(on, references) < color_hist_distance(off, references)
    on_ssim, _ = reference_similarity(acme("beach", 99), references)
    off_ssim, _ = reference_similarity(render_scene(Scene(RED_CAN, "city", 99), 64), references)
    assert on_ssim > off_ssim
    # A reference itself is its own nearest neighbour.
    same_ssim, same_hash = reference_similarity(acme("snow", 1), references)
    assert same_ssim == pytest.approx(1.0) and same_hash == 0.0
    with pytest.raises(MetricInputError, match="empty"):
        ReferenceSet.from_images([])


def test_diversity_zero_for_identical_images_and_higher_for_varied() -> None:
    img = acme()
    assert diversity([img, img, img]) == (0.0, 0.0)
    varied = diversity([acme("beach", 1), acme("snow", 2), render_scene(Scene(RED_CAN, "city", 3), 64)])
    assert varied[0] > 0.2 and varied[1] > 5
    assert score_set([img, img]) == {"diversity_ssim": 0.0, "diversity_phash": 0.0}
    with pytest.raises(MetricInputError, match="at least 2"):
        diversity([img])


def test_blur_lowers_sharpness() -> None:
    img = acme(size=128)
    blurred = img.filter(ImageFilter.GaussianBlur(2))
    assert technical_check(blurred).sharpness < 0.5 * technical_check(img).sharpness
    limits = TechnicalLimits(min_sharpness=technical_check(img).sharpness * 0.5)
    assert "blurry" in technical_check(blurred, limits).failures
    assert technical_check(img, limits).ok


def test_technical_check_catches_broken_frames() -> None:
    good = technical_check(acme("beach"))
    assert good.ok and good.failures == () and good.clipped_share < 0.1 and good.contrast > 0.05
    black = technical_check(np.zeros((64, 64, 3), np.uint8))
    assert not black.ok and {"black", "constant"} <= set(black.failures)
    grey = technical_check(np.full((64, 64), 0.5, np.float32))
    assert "constant" in grey.failures and "low_contrast" in grey.failures
    nan = np.asarray(acme(), np.float32) / 255
    nan[10:20] = np.nan
    assert "non_finite" in technical_check(nan).failures
    blown = technical_check(ImageEnhance.Brightness(acme("beach")).enhance(4))
    assert blown.clipped_share > 0.5 and blown.highlight_share > 0.5 and "clipped" in blown.failures


def test_input_types_agree() -> None:
    img = acme()
    arr_u8 = np.asarray(img)
    arr_f = arr_u8.astype(np.float32) / 255
    rgba = np.dstack([arr_u8, np.full(arr_u8.shape[:2], 255, np.uint8)])
    scores = [score_image(x, palette=PALETTE, neutral_palette=NEUTRAL) for x in (img, arr_u8, arr_f, rgba)]
    for other in scores[1:]:
        assert other == pytest.approx(scores[0])
    with pytest.raises(MetricInputError, match="transpose"):
        score_image(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(MetricInputError, match="PIL image or numpy"):
        score_image([[0, 0, 0]])  # type: ignore[arg-type]


def test_score_image_names_and_directions(references: ReferenceSet) -> None:
    scores = score_image(acme(), palette=Palette.from_hex(PALETTE, NEUTRAL), references=references)
    assert set(scores) == {
        "palette_delta_e",
        "palette_share",
        "color_hist_distance",
        "ref_ssim",
        "ref_phash_distance",
        "sharpness",
        "clipped_share",
        "contrast",
        "technical_ok",
    }
    assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values())
    assert set(scores) | set(score_set([acme(), acme()])) <= set(METRIC_DIRECTIONS)
    assert set(METRIC_DIRECTIONS) == set(METRIC_DESCRIPTIONS)
    assert set(score_image(acme())) == {"sharpness", "clipped_share", "contrast", "technical_ok"}
    nan_scores = score_image(np.full((64, 64, 3), np.nan, np.float32), palette=PALETTE, references=references)
    assert nan_scores["technical_ok"] == 0.0
    assert all(np.isfinite(v) for v in nan_scores.values())


def test_large_images_score_like_small_ones() -> None:
    small = score_image(acme(size=64), palette=PALETTE, neutral_palette=NEUTRAL)
    large = score_image(acme(size=512), palette=PALETTE, neutral_palette=NEUTRAL)
    assert abs(small["palette_delta_e"] - large["palette_delta_e"]) < 3
    assert large["technical_ok"] == 1.0
