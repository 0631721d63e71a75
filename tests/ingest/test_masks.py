"""brandtune.ingest.masks through ingest: masks from the alpha channel, from mask files in the three conventions
(also inside a zip), computed on a plain background, refused on a busy one, every kind of bad mask file with its
reason code, the fingerprint following the masks, the aspect ratio kept, and the contact sheet."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from brandtune.config import BrandSpec, IngestConfig
from brandtune.ingest import IngestResult, ingest
from brandtune.settings import Settings

SIZE = (96, 128)  # (width, height) of the test photos: 3:4 portrait


def _shape(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """A bottle-ish product: an ellipse body and a neck, placed a little differently per seed. (h, w) bool."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w * (0.45 + 0.03 * (seed % 4))
    body = ((xx - cx) / (w * 0.22)) ** 2 + ((yy - h * 0.6) / (h * 0.28)) ** 2 <= 1
    neck = (abs(xx - cx) <= w * 0.06) & (yy >= h * 0.15) & (yy < h * 0.4)
    return body | neck


def _product(path: Path, background: Any, seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Write a teal product with an orange band on ``background`` (an RGB triple or an (h, w, 3) array)."""
    shape = _shape(size, seed)
    arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = background
    arr[shape] = [30, 160, 150]
    arr[shape & (np.arange(size[1])[:, None] % 20 < 5)] = [240, 140, 40]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return shape


def _noise(path: Path, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _product(path, rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8), seed)


def _cfg(brand: BrandSpec, **kw: Any) -> IngestConfig:
    return IngestConfig.for_brand(brand, min_images=1, near_duplicate_distance=-1, **kw)


def _rows(result: IngestResult) -> dict[str, dict[str, Any]]:
    rows = json.loads((result.path / "manifest.json").read_text())["images"]
    return {Path(r["source"].split("!")[-1]).name: r for r in rows}


def _mask(result: IngestResult, row: dict[str, Any]) -> np.ndarray:
    with (
        Image.open(result.path / row["mask"]["file"]) as m,
        Image.open(result.path / row["file_name"]) as img,
    ):
        assert m.mode == "L" and m.size == img.size
        return np.asarray(m) >= 128


def _resized(shape: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray((shape * 255).astype(np.uint8), "L").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_alpha_channel_is_the_mask(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    shape = _shape()
    soft = Image.fromarray((shape * 255).astype(np.uint8), "L").resize((48, 64)).resize(SIZE)  # soft edges
    rgba = np.zeros((SIZE[1], SIZE[0], 4), dtype=np.uint8)
    rgba[..., :3] = [30, 160, 150]
    rgba[..., 3] = np.asarray(soft)
    (tmp_path / "photos").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photos" / "cutout.png")
    brand = brand.model_copy(update={"background": "#00ff00"})
    result = ingest(brand, tmp_path / "photos", _cfg(brand), settings, progress=False)
    row = _rows(result)["cutout.png"]
    assert row["mask"]["source"] == "alpha" and row["file_name"].removesuffix(".png") in row["mask"]["file"]
    with Image.open(result.path / row["file_name"]) as img:
        size = img.size
        corner = np.asarray(img)[1, 1]
    assert size == (55, 74)  # 3:4 kept, about 64*64 pixels
    assert abs(int(corner[1]) - 255) <= 2 and corner[0] <= 2  # composited on the brand's background
    expected = np.asarray(soft.resize(size, Image.Resampling.LANCZOS)) >= 128
    assert _iou(_mask(result, row), expected) >= 0.95
    assert 0.1 < row["mask"]["coverage"] < 0.5
    meta = [json.loads(line) for line in result.metadata_path.read_text().splitlines()]
    assert meta[0]["mask_file_name"] == row["mask"]["file"]


@pytest.mark.parametrize(
    ("convention", "mask_name"),
    [("brandtune", "shot.mask.png"), ("onetrainer", "shot-masklabel.png"), ("kohya", "mask/shot.jpg")],
)
def test_mask_file_conventions(
    brand: BrandSpec, settings: Settings, tmp_path: Path, convention: str, mask_name: str
) -> None:
    folder = tmp_path / "photos"
    _noise(folder / "shot.png", 1)
    _noise(folder / "other.png", 2)
    # The mask marks only the left half of the product: it must be the file's, not a guess.
    truth = _shape(SIZE, 1) & (np.arange(SIZE[0])[None, :] < SIZE[0] // 2)
    (folder / mask_name).parent.mkdir(exist_ok=True)
    Image.fromarray((truth * 255).astype(np.uint8), "L").save(folder / mask_name, quality=95)
    (folder / "lonely.mask.png").write_bytes((folder / mask_name).read_bytes())
    result = ingest(brand, folder, _cfg(brand), settings, progress=False)
    assert result.num_images == 2, f"{convention}: a mask file was ingested as a photo"
    rows = _rows(result)
    assert rows["shot.png"]["mask"]["source"] == "file"
    assert _iou(_mask(result, rows["shot.png"]), _resized(truth, (55, 74))) >= 0.9
    assert rows["other.png"]["mask"] is None and rows["other.png"]["mask_note"] == "no mask: busy background"
    report = json.loads(result.report_path.read_text())
    assert {Path(r["source"]).name: r["reason"] for r in report["rejected"]} == {
        "lonely.mask.png": "mask_orphan"
    }
    assert report["masks"]["counts"] == {"file": 1, "alpha": 0, "auto": 0, "none": 1}


def test_masks_inside_a_zip(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "src"
    truth = _noise(src / "a.png", 3)
    Image.fromarray((truth * 255).astype(np.uint8), "L").save(src / "a-masklabel.png")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src / "a.png", "photos/a.png")
        zf.write(src / "a-masklabel.png", "photos/mask/a.png")  # kohya beats nothing: the only mask
    result = ingest(brand, archive, _cfg(brand), settings, progress=False)
    assert result.num_images == 1
    row = _rows(result)["a.png"]
    assert row["mask"]["source"] == "file" and _iou(_mask(result, row), _resized(truth, (55, 74))) >= 0.95


def test_automatic_mask_on_plain_background_and_busy_refused(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    plain = _product(folder / "plain.png", [235, 235, 240], seed=0)
    # a studio-like vertical gradient with a little sensor noise
    rng = np.random.default_rng(5)
    ramp = np.linspace(170, 230, SIZE[1])[:, None, None] + rng.normal(0, 2, (SIZE[1], SIZE[0], 3))
    gradient = _product(folder / "gradient.png", np.clip(ramp, 0, 255).astype(np.uint8), seed=1)
    _noise(folder / "busy.png", 4)
    result = ingest(brand, folder, _cfg(brand), settings, progress=False)
    rows = _rows(result)
    for name, shape in (("plain.png", plain), ("gradient.png", gradient)):
        assert rows[name]["mask"]["source"] == "auto", rows[name]
        assert _iou(_mask(result, rows[name]), _resized(shape, (55, 74))) >= 0.9
    assert rows["busy.png"]["mask"] is None and rows["busy.png"]["mask_note"] == "no mask: busy background"
    report = json.loads(result.report_path.read_text())
    (note,) = report["masks"]["without_mask"]
    assert note["note"] == "no mask: busy background" and "border spread" in note["detail"]
    # 'given' computes nothing; 'off' writes no mask and no column.
    given = _rows(ingest(brand, folder, _cfg(brand, masks="given"), settings, progress=False))
    assert given["plain.png"]["mask"] is None and given["plain.png"]["mask_note"] == "no mask: none given"
    off = ingest(brand, folder, _cfg(brand, masks="off"), settings, progress=False)
    assert not list(off.path.glob("*.mask.png"))
    assert all("mask_file_name" not in json.loads(x) for x in off.metadata_path.read_text().splitlines())


def _write_bad_masks(folder: Path) -> dict[str, str]:
    """One photo per kind of bad mask file; returns photo name -> expected reason code."""
    shape = _shape()
    grey = (shape * 255).astype(np.uint8)
    bad = {
        "wrong_size": ("mask_wrong_size", Image.fromarray(grey, "L").resize((64, 64))),
        "empty": ("mask_empty", Image.new("L", SIZE, 0)),
        "full": ("mask_full", Image.new("L", SIZE, 255)),
        "colour": ("mask_not_greyscale", Image.fromarray(np.stack([grey, grey * 0, grey], axis=2), "RGB")),
        "cmyk": ("mask_not_greyscale", Image.new("CMYK", SIZE, (0, 0, 0, 255))),
    }
    expected = {}
    for i, (name, (code, img)) in enumerate(bad.items()):
        _noise(folder / f"{name}.png", 10 + i)
        img.save(folder / (f"{name}.mask.png" if img.mode != "CMYK" else f"mask/{name}.jpg"))
        expected[name] = code
    _noise(folder / "garbage.png", 20)
    (folder / "garbage.mask.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    expected["garbage"] = "mask_unreadable"
    return expected


def test_every_bad_mask_has_its_reason(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "mask").mkdir(parents=True)
    expected = _write_bad_masks(folder)
    # Good ones in odd formats: grey RGB, white-on-transparent RGBA, 1-bit.
    shape = _shape(SIZE, 2)
    for name, img in {
        "rgb": Image.fromarray((shape * 200).astype(np.uint8), "L").convert("RGB"),
        "rgba": Image.fromarray(
            np.dstack([np.full((*shape.shape, 3), 255, np.uint8), shape * 255]).astype(np.uint8)
        ),
        "onebit": Image.fromarray(shape).convert("1"),
    }.items():
        _noise(folder / f"{name}.png", 30 + len(name))
        img.save(folder / f"{name}.mask.png")
    result = ingest(brand, folder, _cfg(brand), settings, progress=False)
    assert result.num_images == len(expected) + 3  # every photo kept
    report = json.loads(result.report_path.read_text())
    got = {Path(p["photo"]).stem: p["reason"] for p in report["masks"]["problems"]}
    assert got == expected
    rows = _rows(result)
    for name, code in expected.items():
        assert rows[f"{name}.png"]["mask"] is None and code in rows[f"{name}.png"]["mask_note"]
    for name in ("rgb", "rgba", "onebit"):
        assert _iou(_mask(result, rows[f"{name}.png"]), _resized(shape, (55, 74))) >= 0.95, name
    html = (result.path / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == result.num_images
    assert all(code in html for code in expected.values())
    with Image.open(result.path / "masks.png") as sheet:
        assert sheet.width > 128 and sheet.height > 128


def test_mask_follows_exif_orientation(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    upright = np.zeros((120, 90, 3), dtype=np.uint8)
    upright[:60] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: 120 wide, 90 high; shown 90x120
    for name, bottom in (("upright", [0, 0, 255]), ("stored", [0, 255, 0])):
        upright[60:] = bottom
        Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(folder / f"{name}.jpg", exif=exif)
    top = np.zeros((120, 90), dtype=np.uint8)
    top[:60] = 255
    Image.fromarray(top).save(folder / "upright.mask.png")  # drawn on the photo as displayed: right
    Image.fromarray(top).transpose(Image.Transpose.ROTATE_90).save(
        folder / "stored.mask.png"
    )  # 120x90: wrong
    result = ingest(brand, folder, _cfg(brand), settings, progress=False)
    rows = _rows(result)
    mask = _mask(result, rows["upright.jpg"])
    assert mask[: mask.shape[0] // 2 - 2].all() and not mask[mask.shape[0] // 2 + 2 :].any()
    assert rows["stored.jpg"]["mask_note"] == "no mask: bad mask file (mask_wrong_size)"


def test_fingerprint_follows_the_masks(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shape = _noise(folder / "a.png", 1)
    _noise(folder / "b.png", 2)
    mask = Image.fromarray((shape * 255).astype(np.uint8), "L")
    mask.save(folder / "a.mask.png")
    first = ingest(brand, folder, _cfg(brand), settings, progress=False)
    again = ingest(brand, folder, _cfg(brand), settings, progress=False)
    assert again.fingerprint == first.fingerprint and again.reused
    arr = np.asarray(mask).copy()
    arr[40:60, 30:50] = 255 - arr[40:60, 30:50]
    Image.fromarray(arr).save(folder / "a.mask.png")
    changed = ingest(brand, folder, _cfg(brand), settings, progress=False)
    assert changed.fingerprint != first.fingerprint
    off = ingest(brand, folder, _cfg(brand, masks="off"), settings, progress=False)
    assert off.fingerprint not in {first.fingerprint, changed.fingerprint}


def test_portrait_keeps_its_aspect(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shape = _product(folder / "portrait.png", [240, 240, 240], size=(128, 192))
    _product(folder / "panorama.png", [240, 240, 240], size=(390, 130))  # 3:1, over max_aspect 2.5
    result = ingest(brand, folder, _cfg(brand), settings, progress=False)
    row = _rows(result)["portrait.png"]
    with Image.open(result.path / row["file_name"]) as img:
        assert img.size == (52, 78)  # 2:3, 4056 ~= 64*64 pixels; nothing cut off
    assert _iou(_mask(result, row), _resized(shape, (52, 78))) >= 0.9
    report = json.loads(result.report_path.read_text())
    assert [(Path(r["source"]).name, r["reason"]) for r in report["rejected"]] == [
        ("panorama.png", "extreme_aspect")
    ]
    meta = json.loads(result.metadata_path.read_text().splitlines()[0])
    assert (meta["width"], meta["height"]) == (128, 192) and meta["mask_file_name"] == row["mask"]["file"]
