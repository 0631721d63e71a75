"""The demo's before/after sheet: the base model's images next to the adapter's, same settings and seeds.

``brandtune demo`` (:mod:`brandtune.cli.demo`) runs the flows and calls :func:`before_after` on the two campaign
folders they write.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

LABEL_FONT_SIZE = 12  # px; the before/after sheet's labels
CELL = 96  # px; one image on the sheet
GAP = 12  # px between the base model's half and the adapter's
HEADER = 20  # px above the images, for the two halves' titles
LEFT = 90  # px left of the images, for each row's setting and seeds
INK, FAINT = (40, 40, 40), (110, 110, 110)


def before_after(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """One PNG: per setting, the base model's images (left) next to the adapter's (right), same seeds."""
    import json

    from PIL import ImageDraw, ImageFont

    from brandtune.images import image_grid, save_png

    rows = json.loads((adapter_dir / "manifest.json").read_text())["images"]
    by_setting = [[r for r in rows if r["setting"] == s] for s in dict.fromkeys(r["setting"] for r in rows)]
    per = max(len(mine) for mine in by_setting)
    halves = [
        image_grid(_tiles(folder, by_setting, per), columns=per, thumb=CELL)
        for folder in (base_dir, adapter_dir)
    ]
    sheet = image_grid(halves, columns=2, thumb=None, gap=GAP, margin=(LEFT, HEADER))
    draw = ImageDraw.Draw(sheet)
    # Pillow's bundled TrueType font (the bitmap default drops spaces: "noadapter")
    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    draw.text((LEFT + 4, 4), "base model (no adapter)", fill=INK, font=font)
    draw.text((LEFT + per * CELL + GAP + 4, 4), "with the brand adapter", fill=INK, font=font)
    for y, mine in enumerate(by_setting):
        middle = HEADER + y * CELL + CELL // 2
        _label(draw, (4, middle - 12), mine[0]["setting"], INK, font)
        _label(draw, (4, middle + 2), f"seeds {mine[0]['seed']}-{mine[-1]['seed']}", FAINT, font)
    save_png(sheet, out)
    return out


def _tiles(folder: Path, by_setting: list[list[dict[str, Any]]], per: int) -> list[Image.Image | None]:
    """A campaign folder's images, one row of ``per`` cells per setting (a short row padded with blanks)."""
    from PIL import Image

    tiles: list[Image.Image | None] = []
    for mine in by_setting:
        for r in mine:
            with Image.open(folder / r["file"]) as img:
                tiles.append(img.convert("RGB"))
        tiles += [None] * (per - len(mine))
    return tiles


def _label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    fill: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """Draw a row label, shortened with an ellipsis where it would run onto the images."""
    room = LEFT - xy[0]
    if draw.textlength(text, font=font) > room:
        while text and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text += "…"
    draw.text(xy, text, fill=fill, font=font)
