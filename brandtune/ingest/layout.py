"""Reading a dataset folder back: the images ``metadata.jsonl`` lists, with their captions and product masks.

This is the one reader of the dataset layout (:mod:`brandtune.ingest.dataset` writes it) that training and
evaluation share. A dataset folder on disk is untrusted input: every listed file must exist inside the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from brandtune.errors import IngestError

METADATA = "metadata.jsonl"


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


def dataset_images(folder: Path) -> list[DatasetImage]:
    """The images of a dataset folder in ``metadata.jsonl``'s order, each file checked to exist inside it.

    Raises:
        IngestError: the folder is not a complete dataset (no ``manifest.json``/``metadata.jsonl``), a line is not
            a JSON object with ``file_name`` and ``text``, or a listed image or mask is missing or lies outside the
            folder.
    """
    meta = folder / METADATA
    if not (folder / "manifest.json").is_file() or not meta.is_file():
        raise IngestError(f"{folder} is not a complete brandtune dataset (no manifest.json/{METADATA})")
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
    return images
