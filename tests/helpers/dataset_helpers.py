"""Dataset folders built by hand as issue 16's contract lays them out (images, ``<sha>.mask.png`` masks,
``metadata.jsonl`` with ``mask_file_name``, ``manifest.json``), for training tests that need masks or other
aspects than ingest makes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def write_dataset(
    datasets_dir: Path,
    brand: str,
    items: list[tuple[np.ndarray, str, np.ndarray | None]],
    resolution: int,
) -> Path:
    """A complete dataset folder of ``brand`` under ``datasets_dir`` from (RGB uint8 array, caption, L uint8 mask
    or None) items; its name (the fingerprint) hashes every pixel, caption and mask. Returns the folder."""
    from PIL import Image

    digest = hashlib.sha256()
    rows: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    files: dict[str, Image.Image] = {}
    any_mask = any(mask is not None for _, _, mask in items)
    for pixels, caption, mask in items:
        sha = hashlib.sha256(pixels.tobytes()).hexdigest()
        name = f"{sha[:20]}.png"
        height, width = pixels.shape[:2]
        digest.update(sha.encode() + caption.encode())
        files[name] = Image.fromarray(pixels, "RGB")
        row: dict[str, Any] = {"file_name": name, "text": caption, "width": width, "height": height}
        if any_mask:
            row["mask_file_name"] = None
        if mask is not None:
            row["mask_file_name"] = f"{sha[:20]}.mask.png"
            digest.update(hashlib.sha256(mask.tobytes()).digest())
            files[row["mask_file_name"]] = Image.fromarray(mask, "L")
        rows.append(row)
        entry = {"file_name": name, "caption": caption, "original_size": [width, height], "mask": None}
        if mask is not None:
            entry["mask"] = {"file": row["mask_file_name"]}
        images.append(entry)
    folder = datasets_dir / brand / digest.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in files.items():
        img.save(folder / name)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    manifest = {"brand": brand, "fingerprint": folder.name, "resolution": resolution, "images": images}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    record_hashes(folder)
    return folder


def record_hashes(folder: Path) -> None:
    """Record in ``manifest.json`` the sha256 of each image and mask file as they are now, as ingest records them
    (the layout reader refuses a file whose bytes differ from its record)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["images"]:
        entry["sha256"] = hashlib.sha256((folder / entry["file_name"]).read_bytes()).hexdigest()
        if entry.get("mask"):
            entry["mask"]["sha256"] = hashlib.sha256(
                (folder / entry["mask"]["file"]).read_bytes()
            ).hexdigest()
    path.write_text(json.dumps(manifest))
