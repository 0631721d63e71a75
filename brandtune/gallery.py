"""Contact sheets (one PNG per setting) and an ``index.html`` gallery for a campaign folder."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.fsutil import atomic_write_text
from brandtune.images import image_grid, save_png

if TYPE_CHECKING:
    from PIL import Image

    from brandtune.config import BrandSpec, GenerateConfig

THUMB = 128


def contact_sheet(images: list[Path], labels: list[str], columns: int = 5, thumb: int = THUMB) -> Image.Image:
    """A grid of thumbnails of the PNG files ``images`` with a small label under each."""
    from PIL import Image

    tiles = []
    for path in images:
        with Image.open(path) as img:
            tiles.append(img.convert("RGB"))
    return image_grid(tiles, columns, thumb=thumb, labels=labels)


def write_contact_sheets(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``contact_<setting>.png`` for every setting whose images exist."""
    sheets = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting and (out / r["file"]).is_file()]
        if not mine:
            continue
        sheet = contact_sheet([out / r["file"] for r in mine], [f"seed {r['seed']}" for r in mine])
        path = out / f"contact_{setting}.png"
        save_png(sheet, path)
        sheets.append(path)
    return sheets


def write_gallery(
    out: Path,
    brand: BrandSpec,
    cfg: GenerateConfig,
    info: dict[str, str],
    rows: list[dict[str, Any]],
    sheets: list[Path],
) -> Path:
    """A plain HTML page (relative links to the images) grouped by setting, with what made each image."""
    esc = html.escape
    model = (
        f"{info['model']} (version {info['version']})" if info.get("version") else "base model, no adapter"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(brand.display_name or brand.name)} campaign</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "figure{display:inline-block;margin:4px;text-align:center;font-size:12px;color:#555}"
        "img.t{width:160px;height:160px;image-rendering:pixelated;border:1px solid #ddd}"
        "h2{margin-top:1.5em}code{background:#f4f4f4;padding:1px 4px}</style></head><body>",
        f"<h1>{esc(brand.display_name or brand.name)}: campaign</h1>",
        f"<p>Prompt: <code>{esc(cfg.prompt)}</code><br>Model: {esc(model)} on {esc(info['base_model'])}<br>",
        f"Sampler: {esc(cfg.sampler.scheduler)}, {cfg.sampler.num_inference_steps} steps, guidance "
        f"{cfg.sampler.guidance_scale}. Every image's settings are in <a href='manifest.json'>manifest.json</a>.</p>",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting and (out / r["file"]).is_file()]
        if not mine:
            continue
        parts.append(f"<h2>{esc(mine[0]['prompt'])}</h2>")
        for r in mine:
            parts.append(
                f"<figure><a href='{esc(r['file'])}'><img class='t' src='{esc(r['file'])}' "
                f"alt='{esc(r['prompt'])}'></a><figcaption>seed {r['seed']}</figcaption></figure>"
            )
    if sheets:
        parts.append(
            "<h2>Contact sheets</h2><p>"
            + " ".join(f"<a href='{esc(s.name)}'>{esc(s.name)}</a>" for s in sheets)
            + "</p>"
        )
    parts.append("</body></html>")
    path = out / "index.html"
    atomic_write_text(path, "\n".join(parts))
    return path
