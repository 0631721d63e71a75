"""brandtune.ingest.images: each bad photo rejected with its reason, odd modes converted correctly, EXIF
orientation applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import FIXTURES, make_photos, rejections
from PIL import Image

from brandtune.config import BrandSpec, IngestConfig
from brandtune.ingest import ingest
from brandtune.settings import Settings


def test_bad_fixture_folder_rejects_each_file_with_its_reason(brand: BrandSpec, settings: Settings) -> None:
    result = ingest(
        brand, FIXTURES, IngestConfig.for_brand(brand, animated="reject"), settings, progress=False
    )
    got = rejections(result.path)
    expected = {
        "not_an_image.jpg": "not_an_image",
        "corrupt.png": "corrupt",
        "truncated.jpg": "truncated",
        "tiny.png": "too_small",
        "panorama.png": "extreme_aspect",
        "bomb.png": "decompression_bomb",
        "animated.gif": "animated",
    }
    for name, reason in expected.items():
        assert got.get(name) == reason, f"{name}: {got.get(name)} (report: {got})"
    # Of each duplicate pair exactly one file is dropped, with the matching reason.
    assert [got.get(n) for n in ("duplicate_of_studio.png", "studio.png")].count("duplicate") == 1
    assert [got.get(n) for n in ("near_duplicate_of_forest.jpg", "forest.png")].count("near_duplicate") == 1
    # The zip's escaping entries are refused and nothing lands outside.
    assert "evil.png" in got and got["evil.png"] == "unsafe_archive_entry"
    # Odd-but-valid modes are converted, not rejected.
    for name in ("cmyk.jpg", "rgba.png", "palette.png", "gray16.png"):
        assert name not in got, f"{name} should be converted, got {got.get(name)}"
    manifest = json.loads((result.path / "manifest.json").read_text())
    for row in manifest["images"]:
        with Image.open(result.path / row["file_name"]) as img:  # crop 'keep': the aspect, about 64*64 pixels
            assert img.mode == "RGB" and abs(img.width * img.height - 64 * 64) <= 64
            assert abs(img.width / img.height - row["original_aspect"]) <= 0.05


def test_animated_first_frame_is_default(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 4)
    (folder / "animated.gif").write_bytes((FIXTURES / "animated.gif").read_bytes())
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert result.num_images == 5
    report = json.loads(result.report_path.read_text())
    assert any("first frame" in " ".join(n["notes"]) for n in report["converted"])


def test_conversions_are_correct(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 4)
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # fully transparent red: must come out as the background colour
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    cmyk = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(folder / "red_cmyk.jpg", quality=95)
    Image.fromarray(np.full((100, 100), 32896, dtype=np.uint16)).save(folder / "gray16.png")
    cfg = IngestConfig.for_brand(brand, background="#00ff00", near_duplicate_distance=-1)
    result = ingest(brand, folder, cfg, settings, progress=False)
    manifest = json.loads((result.path / "manifest.json").read_text())
    by_source = {Path(r["source"]).name: r for r in manifest["images"]}

    def pixel(name: str) -> np.ndarray:
        return np.asarray(Image.open(result.path / by_source[name]["file_name"]))[32, 32].astype(int)

    assert np.abs(pixel("transparent.png") - [0, 255, 0]).max() <= 1
    red = pixel("red_cmyk.jpg")
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert np.abs(pixel("gray16.png") - 128).max() <= 1


def test_exif_orientation_is_applied(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 4)
    # Stored sideways (top of the scene on the right) with Orientation=6 ("rotate 90 CW to view").
    upright = np.zeros((120, 90, 3), dtype=np.uint8)
    upright[:60] = [255, 0, 0]  # red on top when viewed
    upright[60:] = [0, 0, 255]
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "sideways.jpg", exif=exif, quality=95)
    cfg = IngestConfig.for_brand(brand, crop="none", max_aspect=3)
    result = ingest(brand, folder, cfg, settings, progress=False)
    row = next(
        r
        for r in json.loads((result.path / "manifest.json").read_text())["images"]
        if "sideways" in r["source"]
    )
    assert row["original_size"] == [90, 120]
    img = np.asarray(Image.open(result.path / row["file_name"])).astype(int)
    assert img[8, 32, 0] > 200 and img[56, 32, 2] > 200  # red above blue


def test_a_file_over_the_size_cap_is_refused_unread(
    brand: BrandSpec, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brandtune.ingest import images

    folder = tmp_path / "photos"
    photos = make_photos(folder, 5)
    monkeypatch.setattr(images, "MAX_PHOTO_BYTES", photos[0].stat().st_size - 1)  # in-process: few photos
    result = ingest(brand, folder, IngestConfig.for_brand(brand, min_images=1), settings, progress=False)
    got = rejections(result.path)
    assert set(got.values()) == {"too_large"} and len(got) + result.num_images == 5
    assert photos[0].name in got


def test_an_animation_of_many_frames_is_not_walked_frame_by_frame(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    """Only the first frame is decoded and the frames are not counted: a 2,000-frame GIF costs what a still does."""
    import time

    folder = tmp_path / "photos"
    make_photos(folder, 4)
    frames = [Image.new("L", (96, 96), 40 + i % 2 * 100) for i in range(2000)]  # alternating: no merging
    frames[0].save(folder / "long.gif", save_all=True, append_images=frames[1:], duration=10)
    started = time.perf_counter()
    result = ingest(brand, folder, IngestConfig.for_brand(brand, min_images=1), settings, progress=False)
    print(f"ingest with a 2,000-frame GIF: {time.perf_counter() - started:.2f} s")
    report = json.loads(result.report_path.read_text())
    notes = " ".join(" ".join(n["notes"]) for n in report["converted"])
    assert result.num_images == 5 and "animated GIF: first frame used" in notes
