"""The ingest's contact sheet: every image of a dataset with its mask overlaid, to check the masks at a glance.

``report.html`` (self-contained: the tiles are data URIs) shows each image with the background outside its mask
dimmed and tinted and the product's outline drawn, the mask's source and coverage (or why it has none), then the
bad mask files and the rejected files of ``report.json``. ``masks.png`` is the same grid as one image.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from brandtune.images import image_grid, save_png

TILE = 128  # largest side of a tile, px
COLUMNS = 8
OUTLINE = (255, 0, 200)  # the product's outline
TINT = (20, 30, 70)  # what the background is dimmed towards


def overlay(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """``image`` scaled to fit a ``TILE`` square (nearest neighbour when enlarged), with the background outside
    ``mask`` dimmed towards ``TINT`` and the product's outline in ``OUTLINE``; unchanged without a mask."""
    scale = TILE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    how = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    tile = image.convert("RGB").resize(size, how)
    if mask is None:
        return tile
    m = mask.convert("L").resize(size, how)
    weight = np.asarray(m, dtype=np.float32)[..., None] / 255.0  # (h, w, 1)
    rgb = np.asarray(tile, dtype=np.float32)
    dimmed = 0.35 * rgb + 0.65 * np.asarray(TINT, dtype=np.float32)
    out = weight * rgb + (1.0 - weight) * dimmed
    solid = m.point(lambda v: 255 if v >= 128 else 0)
    edge = np.asarray(solid) > np.asarray(solid.filter(ImageFilter.MinFilter(3)))
    out[edge] = OUTLINE
    return Image.fromarray(out.round().astype(np.uint8), "RGB")


def _label(row: dict[str, Any]) -> str:
    mask = row.get("mask")
    if mask:
        return f"{mask['source']} {100 * mask['coverage']:.0f}%"
    note = str(row.get("mask_note") or "no mask").removeprefix("no mask: ")
    return note.removeprefix("bad mask file (").removesuffix(")")[:20]


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(title: str, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    if not rows:
        return f"<h2>{title}</h2><p>None.</p>"
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(k) or ''))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<h2>{title} ({len(rows)})</h2><table><tr>{head}</tr>{body}</table>"


def write_contact_sheet(folder: Path, images: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Write ``report.html`` and ``masks.png`` into the dataset ``folder`` from its manifest rows and report."""
    tiles, figures = [], []
    for row in images:
        with Image.open(folder / row["file_name"]) as img:
            mask = None
            if row.get("mask"):
                with Image.open(folder / row["mask"]["file"]) as m:
                    mask = m.copy()
            tile = overlay(img, mask)
        tiles.append(tile)
        what = _label(row) if row.get("mask") else row.get("mask_note", "no mask")
        figures.append(
            f"<figure><img src='{_data_uri(tile)}' alt=''><figcaption><b>{html.escape(what)}</b><br>"
            f"{html.escape(Path(row['source'].split('!')[-1]).name)}<br>{row['original_size'][0]}x"
            f"{row['original_size'][1]}</figcaption></figure>"
        )
    if tiles:
        save_png(
            image_grid(tiles, COLUMNS, thumb=None, labels=[_label(r) for r in images], gap=4),
            folder / "masks.png",
        )
    masks = report.get("masks", {})
    counts = ", ".join(f"{k}: {v}" for k, v in masks.get("counts", {}).items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Dataset {html.escape(report['brand'])}/{report['fingerprint']}</title><style>"
        "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:4px;width:"
        f"{TILE + 8}px;vertical-align:top;font-size:11px}}figure img{{image-rendering:pixelated}}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "</style></head><body>"
        f"<h1>Dataset {html.escape(report['brand'])}/{report['fingerprint']}</h1>"
        f"<p>{report['accepted']} images, {len(report['rejected'])} rejected files. Masks per source: "
        f"{html.escape(counts)}. Outside its mask an image is dimmed; the product's outline is drawn.</p>"
        + "".join(figures)
        + _table("Bad mask files", masks.get("problems", []), ("source", "photo", "reason", "detail"))
        + _table("Without a mask", masks.get("without_mask", []), ("source", "note", "detail"))
        + _table("Rejected files", report.get("rejected", []), ("source", "reason", "detail"))
        + "</body></html>"
    )
    (folder / "report.html").write_text(page, encoding="utf-8")
