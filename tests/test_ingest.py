from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brandtune.config import BrandSpec, IngestConfig
from brandtune.errors import IngestError
from brandtune.ingest import find_dataset, ingest
from brandtune.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bad"


@pytest.fixture
def brand() -> BrandSpec:
    return BrandSpec(
        name="acme",
        trigger="acme",
        subject="bottle",
        palette=["#1fa6a0"],
        evaluation_prompts=["a photo of {trigger} {subject}"],
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", tracking_uri="sqlite:///unused.db")


def make_photos(folder: Path, count: int, size: tuple[int, int] = (160, 128), seed: int = 0) -> list[Path]:
    """Distinct, structured photos (blurred noise: perceptual hashes far apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        path = folder / f"photo_{i:02d}.png"
        img.save(path)
        paths.append(path)
    return paths


def rejections(result_path: Path) -> dict[str, str]:
    report = json.loads((result_path / "report.json").read_text())
    return {Path(r["source"].split("!")[-1]).name: r["reason"] for r in report["rejected"]}


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
        with Image.open(result.path / row["file_name"]) as img:
            assert img.mode == "RGB" and img.size == (64, 64)


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


def test_captions_sidecar_jsonl_template_and_trigger(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    paths = make_photos(folder, 4)
    paths[0].with_suffix(".txt").write_text("a photo of acme bottle on a beach\n")
    paths[1].with_suffix(".txt").write_text("a teal bottle in the snow")  # no trigger: added
    (folder / "captions.jsonl").write_text(
        json.dumps({"file_name": paths[2].name, "text": "acme on a table"}) + "\n"
    )
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    rows = {
        Path(r["source"]).name: r for r in json.loads((result.path / "manifest.json").read_text())["images"]
    }
    assert rows[paths[0].name]["caption"] == "a photo of acme bottle on a beach"
    assert rows[paths[1].name]["caption"] == "acme, a teal bottle in the snow"
    assert rows[paths[1].name]["trigger_added"] is True
    assert rows[paths[2].name]["caption"] == "acme on a table"
    assert rows[paths[2].name]["caption_source"] == "captions.jsonl"
    assert rows[paths[3].name]["caption"] == "a photo of acme bottle"
    for line in result.metadata_path.read_text().splitlines():
        assert "acme" in json.loads(line)["text"].split(", ")[0]


def test_fingerprint_is_stable_and_sensitive(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    paths = make_photos(folder, 5)
    first = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    again = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert again.fingerprint == first.fingerprint and again.reused and not first.reused
    # Renamed copies in another folder are the same dataset.
    other = tmp_path / "other"
    other.mkdir()
    for i, p in enumerate(paths):
        (other / f"renamed_{4 - i}.png").write_bytes(p.read_bytes())
    assert (
        ingest(brand, other, IngestConfig.for_brand(brand), settings, progress=False).fingerprint
        == first.fingerprint
    )
    # One changed pixel: a new dataset.
    arr = np.asarray(Image.open(paths[0])).copy()
    arr[64, 80] = 255 - arr[64, 80]
    Image.fromarray(arr).save(paths[0])
    changed = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert changed.fingerprint != first.fingerprint
    # One changed caption: a new dataset.
    paths[1].with_suffix(".txt").write_text("a photo of acme bottle in the snow")
    recaptioned = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert recaptioned.fingerprint not in {first.fingerprint, changed.fingerprint}
    # A changed setting: a new dataset.
    bigger = ingest(brand, folder, IngestConfig.for_brand(brand, resolution=96), settings, progress=False)
    assert bigger.fingerprint != recaptioned.fingerprint
    assert find_dataset("acme", settings=settings) == bigger.path
    assert find_dataset("acme", first.fingerprint[:8], settings=settings) == first.path


def test_zip_slip_writes_nothing_outside(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "src", 4)
    archive = tmp_path / "deep" / "upload.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in photos:
            zf.write(p, f"photos/{p.name}")
        zf.writestr("../escaped.png", photos[0].read_bytes())
        zf.writestr("/tmp/absolute_escape.png", photos[1].read_bytes())
        link = zipfile.ZipInfo("photos/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    before = set(tmp_path.rglob("*"))
    result = ingest(brand, archive, IngestConfig.for_brand(brand), settings, progress=False)
    assert result.num_images == 4
    got = rejections(result.path)
    assert got["escaped.png"] == got["absolute_escape.png"] == got["link.png"] == "unsafe_archive_entry"
    created = {
        p for p in set(tmp_path.rglob("*")) - before if p != settings.home and settings.home not in p.parents
    }
    assert created == set()
    assert not Path("/tmp/absolute_escape.png").exists()
    # The committed fixture zip too.
    ingest(
        brand, FIXTURES / "zipslip.zip", IngestConfig.for_brand(brand, min_images=1), settings, progress=False
    )
    assert not (FIXTURES.parent / "evil.png").exists()


def test_too_few_images_is_an_error_with_report(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 2)
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(
        IngestError, match=r"2 photo\(s\) accepted, at least 4 needed.*failed-report.json"
    ) as err:
        ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    report = Path(str(err.value).rsplit(" ", 1)[-1])
    assert json.loads(report.read_text())["rejected"][0]["reason"] == "not_an_image"
    assert not [p for p in (settings.datasets_dir / "acme").iterdir() if p.is_dir()]
    with pytest.raises(IngestError, match="does not exist"):
        ingest(brand, tmp_path / "missing", IngestConfig.for_brand(brand), settings, progress=False)


def test_crash_leaves_no_complete_looking_dataset(
    brand: BrandSpec, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brandtune.ingest.dataset as ds

    folder = tmp_path / "photos"
    make_photos(folder, 4)

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ds, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert list((settings.datasets_dir / "acme").iterdir()) == []
    monkeypatch.undo()
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert (result.path / "manifest.json").is_file() and not result.reused


def test_process_pool_gives_same_dataset_as_serial(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    make_photos(folder, 60, size=(96, 96))
    serial = ingest(brand, folder, IngestConfig.for_brand(brand, workers=1), settings, progress=False)
    pooled = ingest(brand, folder, IngestConfig.for_brand(brand, workers=2), settings, progress=False)
    assert pooled.fingerprint == serial.fingerprint and pooled.num_images == 60


def test_dataset_loads_with_hf_datasets(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    from datasets import load_dataset

    folder = tmp_path / "photos"
    make_photos(folder, 5)
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    ds = load_dataset("imagefolder", data_dir=str(result.path), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 5
    assert set(ds.column_names) >= {"image", "text"}
    assert ds[0]["image"].size == (64, 64)
    assert all(t.startswith("a photo of acme bottle") for t in ds["text"])
