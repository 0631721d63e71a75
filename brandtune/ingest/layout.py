"""Reading a dataset folder back: the images ``metadata.jsonl`` lists, with their captions and product masks.

This is the one reader of the dataset layout (:mod:`brandtune.ingest.dataset` writes it) that training and
evaluation share. A dataset folder on disk is untrusted input: every listed file must exist inside the folder, and
its bytes and caption must be the ones ``manifest.json`` recorded at ingest (each image's and mask's sha256), so an
image changed after ingest is refused rather than trained on under the old fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from brandtune.errors import IngestError
from brandtune.fsutil import sha256_file

METADATA = "metadata.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetImage:
    """One image of a dataset as ``metadata.jsonl`` lists it."""

    file: Path
    caption: str
    width: int  # size of the original photo (SDXL micro-conditioning)
    height: int
    mask: Path | None = None  # the product mask beside the image (255 product, 0 background), if any


def _listed_file(folder: Path, row: dict, key: str, what: str) -> Path:
    name = row.get(key)
    path = (folder / str(name)).resolve()
    if not isinstance(name, str) or not path.is_relative_to(folder.resolve()):
        raise IngestError(
            f"dataset {folder}: {key} {name!r} of {row.get('file_name')!r} points outside the dataset folder; "
            "re-ingest the photos"
        )
    if not path.is_file():
        raise IngestError(
            f"dataset {folder}: {what} {name} listed in {METADATA} is missing; re-ingest the photos"
        )
    return path


def _reingest(folder: Path, brand: str) -> str:
    return f"re-ingest the photos (`brandtune ingest --brand {brand} <photos>`) to make a new dataset"


def manifest_records(folder: Path) -> tuple[str, dict[str, tuple[str, str | None]]]:
    """The brand and, per file name, the sha256 and caption (``None`` for a mask) that ``manifest.json`` records.

    Raises:
        IngestError: the manifest is not JSON or not a brandtune dataset manifest.
    """
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        brand = str(manifest.get("brand") or folder.parent.name)
        records: dict[str, tuple[str, str | None]] = {}
        for entry in manifest["images"]:
            records[str(entry["file_name"])] = (str(entry["sha256"]), str(entry["caption"]))
            if mask := entry.get("mask"):
                records[str(mask["file"])] = (str(mask["sha256"]), None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IngestError(
            f"dataset {folder}: {MANIFEST} is unreadable or incomplete ({exc!r}); "
            f"{_reingest(folder, folder.parent.name)}"
        ) from exc
    return brand, records


def _verify(
    folder: Path, image: DatasetImage, records: dict[str, tuple[str, str | None]], brand: str
) -> None:
    """``image``'s file, caption and mask against the manifest's record."""
    for path, caption in ((image.file, image.caption), (image.mask, None)):
        if path is None:
            continue
        name = path.relative_to(folder.resolve()).as_posix()
        if name not in records:
            raise IngestError(
                f"dataset {folder}: {name} is not recorded in {MANIFEST}, so it cannot be verified; "
                f"{_reingest(folder, brand)}"
            )
        want, recorded = records[name]
        if caption is not None and caption != recorded:
            raise IngestError(
                f"dataset {folder}: the caption of {name} in {METADATA} differs from {MANIFEST}'s "
                f"({caption!r} vs {recorded!r}): it was edited after ingest; {_reingest(folder, brand)}"
            )
        if (got := sha256_file(path)) != want:
            raise IngestError(
                f"dataset {folder}: {path} has sha256 {got}, but {MANIFEST} records {want}: the file changed "
                f"after ingest; {_reingest(folder, brand)}"
            )


def dataset_images(folder: Path, *, verify: bool = True) -> list[DatasetImage]:
    """The images of a dataset folder in ``metadata.jsonl``'s order, each file checked to exist inside it and,
    with ``verify``, to have the sha256 (and caption) that ``manifest.json`` recorded.

    Raises:
        IngestError: the folder is not a complete dataset (no ``manifest.json``/``metadata.jsonl``), a line is not
            a JSON object with ``file_name`` and ``text``, a listed image or mask is missing or lies outside the
            folder, or (``verify``) a file or caption differs from the manifest's record.
    """
    meta = folder / METADATA
    if not (folder / MANIFEST).is_file() or not meta.is_file():
        raise IngestError(f"{folder} is not a complete brandtune dataset (no {MANIFEST}/{METADATA})")
    brand, records = manifest_records(folder) if verify else ("", {})
    images = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            caption, width, height = str(row["text"]), int(row.get("width", 0)), int(row.get("height", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise IngestError(
                f"dataset {folder}: line {number} of {METADATA} is not a valid entry ({exc})"
            ) from exc
        file = _listed_file(folder, row, "file_name", "image")
        mask = _listed_file(folder, row, "mask_file_name", "mask") if row.get("mask_file_name") else None
        images.append(DatasetImage(file, caption, width, height, mask))
        if verify:
            _verify(folder, images[-1], records, brand)
    return images
