"""brandtune.ingest.dataset: the content fingerprint, too few photos, a crash mid-write, the process pool, and a
folder that Hugging Face datasets loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import make_photos
from PIL import Image

from brandtune.config import BrandSpec, IngestConfig
from brandtune.errors import IngestError
from brandtune.ingest import find_dataset, ingest
from brandtune.settings import Settings


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
    mask = np.zeros((96, 96), dtype=np.uint8)
    mask[20:70, 30:60] = 255
    Image.fromarray(mask).save(folder / "photo_07.mask.png")  # the workers get the mask file too
    serial = ingest(brand, folder, IngestConfig.for_brand(brand, workers=1), settings, progress=False)
    pooled = ingest(brand, folder, IngestConfig.for_brand(brand, workers=2), settings, progress=False)
    assert pooled.fingerprint == serial.fingerprint and pooled.num_images == 60
    assert len(list(pooled.path.glob("*.mask.png"))) == 1


def test_dataset_loads_with_hf_datasets(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    from datasets import load_dataset

    folder = tmp_path / "photos"
    make_photos(folder, 5)
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    ds = load_dataset("imagefolder", data_dir=str(result.path), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 5
    assert set(ds.column_names) >= {"image", "text"}
    assert ds[0]["image"].size == (72, 57)  # 160x128 at about 64*64 pixels
    assert all(t.startswith("a photo of acme bottle") for t in ds["text"])
    assert "mask" not in ds.column_names  # busy backgrounds, no mask files: no mask column
    # Two of the five with a mask file: a mask column, null for the other three.
    for path in sorted(folder.glob("*.png"))[:2]:
        mask = np.zeros((128, 160), dtype=np.uint8)
        mask[30:100, 50:110] = 255
        Image.fromarray(mask).save(path.with_name(path.stem + ".mask.png"))
    masked = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    ds = load_dataset(
        "imagefolder", data_dir=str(masked.path), split="train", cache_dir=str(tmp_path / "hf2")
    )
    assert len(ds) == 5 and "mask" in ds.column_names
    masks = [row["mask"] for row in ds]
    assert sum(m is None for m in masks) == 3
    for row in ds:
        if row["mask"] is not None:
            assert row["mask"].mode == "L" and row["mask"].size == row["image"].size


def test_changed_png_is_refused_naming_it_and_reingest_rebuilds(
    brand: BrandSpec, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from brandtune.errors import TrainingError
    from brandtune.ingest.layout import dataset_images
    from brandtune.training.data import read_dataset

    folder = tmp_path / "photos"
    make_photos(folder, 5)
    first = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert len(dataset_images(first.path)) == 5
    victim = sorted(first.path.glob("*.png"))[0]
    original = victim.read_bytes()
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(victim)  # a valid PNG, one pixel changed
    with pytest.raises(IngestError) as err:
        dataset_images(first.path)
    message = str(err.value)
    assert "\n" not in message and str(victim) in message and "brandtune ingest --brand acme" in message
    with pytest.raises(TrainingError, match=victim.name):  # what training reads through
        read_dataset(first.path)
    # a re-ingest of the same photos does not reuse the damaged folder: it rebuilds it in one step
    with caplog.at_level("WARNING", logger="brandtune.ingest"):
        again = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert again.path == first.path and not again.reused
    assert "does not verify" in caplog.text and str(victim) in caplog.text
    assert victim.read_bytes() == original and len(dataset_images(again.path)) == 5
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".tmp")]  # no staging left
    # an edited caption is refused too (metadata.jsonl against the manifest)
    meta = again.path / "metadata.jsonl"
    meta.write_text(meta.read_text().replace("acme bottle", "evil bottle", 1))
    with pytest.raises(IngestError, match=r"caption of .* was edited after ingest"):
        dataset_images(again.path)
    assert ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False).reused is False
