"""Model-based metrics from local folders: tiny random CLIP and DINOv2 built from config (plumbing, not values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brandtune.errors import ConfigError
from brandtune.evaluation.brand_photos import NEUTRAL_GREY, BrandPhoto, mask_box, product_region
from brandtune.evaluation.imageprep import MetricInputError
from brandtune.evaluation.model_metrics import (
    ClipScorer,
    DinoScorer,
    check_model_folder,
    fid_kid,
    load_feature_backbone,
)
from brandtune.synthetic import ACME_PRODUCT, ProductStyle, Scene, render_scene

PROMPTS = [
    "a photo of acme bottle on a beach",
    "a red can in the snow",
    "a mug",
    "a box on a kitchen counter",
]


def images(n: int, size: int = 64) -> list:
    products = [ACME_PRODUCT, ProductStyle("can", "red", "white")]
    return [render_scene(Scene(products[i % 2], "beach", i), size) for i in range(n)]


def test_clip_scores_shapes_and_ranges(clip_dir: Path) -> None:
    clip = ClipScorer.from_pretrained(clip_dir, batch_size=3)
    imgs = images(4)
    clip_t = clip.clip_t(imgs, PROMPTS)
    assert clip_t.shape == (4,) and np.all((clip_t >= 0) & (clip_t <= 100))
    emb = clip.image_embeddings(imgs)
    assert emb.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    refs = images(3, size=48)
    clip_i = clip.clip_i(imgs, refs)
    assert clip_i.shape == (4,) and np.all(np.abs(clip_i) <= 1 + 1e-5)
    np.testing.assert_allclose(clip.clip_i(imgs, clip.image_embeddings(refs)), clip_i, rtol=1e-5)
    # An image is most similar to itself.
    assert clip.clip_i(imgs[:1], imgs[:1])[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(MetricInputError, match="one prompt per image"):
        clip.clip_t(imgs, PROMPTS[:2])


def test_dino_similarity(dino_dir: Path) -> None:
    dino = DinoScorer.from_pretrained(dino_dir)
    imgs = images(3)
    sims = dino.similarity(imgs, images(2))
    assert sims.shape == (3,)
    assert dino.similarity(imgs[:1], imgs[:1])[0] == pytest.approx(1.0, abs=1e-5)
    assert dino.embeddings(imgs).shape == (3, 32)


@pytest.mark.parametrize("which", ["dino", "clip"])
def test_fid_kid_with_local_backbone(which: str, dino_dir: Path, clip_dir: Path) -> None:
    backbone = load_feature_backbone(dino_dir if which == "dino" else clip_dir)
    assert backbone.num_features == (32 if which == "dino" else 16)
    real, fake = images(6), images(5, size=32)
    same = fid_kid(real, real, backbone, kid_subsets=5)
    other = fid_kid(real, fake, backbone, kid_subsets=5)
    assert set(other) == {"fid", "kid", "kid_std"}
    assert all(np.isfinite(v) for v in other.values())
    assert abs(same["fid"]) < 1e-3 and other["fid"] >= 0
    with pytest.raises(MetricInputError, match="at least 2"):
        fid_kid(real[:1], fake, backbone)


def masked_photo(size: int = 64) -> BrandPhoto:
    """A beach photo with a product mask over a 12 x 30 px box at x 20..31, y 10..39 (soft 128 edge column)."""
    from PIL import Image

    mask = np.zeros((size, size), np.uint8)
    mask[10:40, 20:32] = 255
    mask[10:40, 31] = 128  # a soft edge still counts as product for the box
    return BrandPhoto(
        "p.png", render_scene(Scene(ACME_PRODUCT, "beach", 0), size), Image.fromarray(mask, "L")
    )


def test_product_region_is_the_masked_box_on_grey() -> None:
    photo = masked_photo()
    # 30 px tall product, 10% margin (3 px) each side: a 36 px square centred on the box
    assert mask_box(photo.mask, margin=0.1) == (8, 7, 44, 43)
    crop, box = product_region(photo)
    assert box == (8, 7, 44, 43) and crop.size == (36, 36)
    pixels = np.asarray(crop)
    assert tuple(pixels[0, 0]) == NEUTRAL_GREY  # background inside the box is grey
    inside = np.asarray(photo.image)[20, 25]
    assert np.array_equal(pixels[20 - 7, 25 - 8], inside)  # the product as it is
    # a box past the photo's edge is grey there too; no mask or an empty one: the whole photo
    from PIL import Image

    edge = np.zeros((64, 64), np.uint8)
    edge[0:20, 0:10] = 255
    crop, box = product_region(BrandPhoto("e.png", photo.image, Image.fromarray(edge, "L")))
    assert box == (-7, -2, 17, 22) and tuple(np.asarray(crop)[0, 0]) == NEUTRAL_GREY
    assert product_region(BrandPhoto("n.png", photo.image)) == (photo.image, None)
    empty = BrandPhoto("z.png", photo.image, Image.new("L", (64, 64), 0))
    assert product_region(empty) == (photo.image, None)


def test_reference_embeddings_use_the_product_region(clip_dir: Path, dino_dir: Path) -> None:
    photo = masked_photo()
    bare = BrandPhoto(photo.name, photo.image)
    crop, _ = product_region(photo)
    clip = ClipScorer.from_pretrained(clip_dir)
    masked, whole = clip.reference_embeddings([photo]), clip.reference_embeddings([bare])
    np.testing.assert_allclose(masked, clip.image_embeddings([crop]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, clip.image_embeddings([photo.image]), rtol=1e-5, atol=1e-6)
    assert float((masked @ whole.T)[0, 0]) < 1 - 1e-4  # the mask changes what the reference is
    dino = DinoScorer.from_pretrained(dino_dir)
    d_refs = dino.reference_embeddings([photo, bare])
    assert d_refs.shape == (2, 32)  # a 36 px crop and a 64 px photo embed together
    np.testing.assert_allclose(d_refs, dino.embeddings([crop, photo.image]), rtol=1e-5, atol=1e-6)
    assert float(d_refs[0] @ d_refs[1]) < 1 - 1e-4
    d_masked = d_refs
    sims = dino.similarity(images(2), d_masked)
    assert sims.shape == (2,) and np.all(np.abs(sims) <= 1 + 1e-5)


def test_missing_or_unsafe_folders_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_model_folder(tmp_path / "nope", "CLIP model")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        ClipScorer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="pickled weights are not loaded"):
        load_feature_backbone(tmp_path)


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, brandtune.evaluation.model_metrics, brandtune.evaluation.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
