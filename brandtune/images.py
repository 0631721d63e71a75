"""Writing images and laying them out: one PNG writer and one grid builder for every stage.

Generation, evaluation, the gallery, the demo and ``brandtune base sample`` all write their PNGs through
:func:`save_png` (atomically, so a re-run job never finds a half-written image) and build their contact sheets
and sample grids with :func:`image_grid` (the demo's before/after sheet and the training's validation grids too).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from brandtune.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

#: Height in px of the label strip under each tile of a labelled grid.
LABEL_H = 16
LABEL_COLOUR = (60, 60, 60)


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` to ``path`` as PNG, atomically (readers see the old file or the whole new one)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def image_grid(
    images: Sequence[Image.Image | None],
    columns: int,
    thumb: int | None = 128,
    labels: Sequence[str] | None = None,
    *,
    gap: int = 0,
    margin: tuple[int, int] = (0, 0),
) -> Image.Image:
    """Paste images into a grid, row by row, each scaled to ``thumb`` px (nearest neighbour, no blur).

    Args:
        images: The tiles, in reading order; ``None`` leaves its cell blank (to keep a short row aligned).
        columns: Tiles per row (clamped to 1..len(images)).
        thumb: Edge length of a square tile in px; ``None`` pastes the tiles at their own size, in cells as large
            as the largest tile (grids of grids, or samples that are already the size to show).
        labels: Optional text under each tile (one per image), in a ``LABEL_H`` px strip.
        gap: Blank px between neighbouring cells, across and down.
        margin: Blank ``(left, top)`` px before the first column and row, for the caller's own headings.

    Returns:
        An RGB image on a white background.

    Raises:
        ValueError: ``labels`` is given and does not have one entry per image.
    """
    from PIL import Image, ImageDraw

    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images; give one label per image")
    tiles = [img for img in images if img is not None]
    cell_w, cell_h = (thumb, thumb) if thumb is not None else _largest(tiles)
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    row_h = cell_h + (LABEL_H if labels is not None else 0)
    left, top = margin
    size = (left + columns * (cell_w + gap) - gap, top + max(0, rows * (row_h + gap) - gap))
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid) if labels is not None else None
    for i, img in enumerate(images):
        x, y = left + (i % columns) * (cell_w + gap), top + (i // columns) * (row_h + gap)
        if img is not None:
            tile = img.convert("RGB")
            grid.paste(
                tile if thumb is None else tile.resize((thumb, thumb), Image.Resampling.NEAREST), (x, y)
            )
        if draw is not None and labels is not None:
            draw.text((x + 3, y + cell_h + 2), labels[i], fill=LABEL_COLOUR)
    return grid


def _largest(tiles: Sequence[Image.Image]) -> tuple[int, int]:
    """The cell that holds every tile at its own size: the widest width and the tallest height."""
    return max((t.width for t in tiles), default=0), max((t.height for t in tiles), default=0)
