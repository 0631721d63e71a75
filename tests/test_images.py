"""Tests of brandtune.images: the one grid builder every sheet, contact sheet and validation grid goes through."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brandtune.images import LABEL_H, image_grid


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_square_tiles_fill_rows_in_reading_order() -> None:
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    grid = np.asarray(image_grid([_solid(red), _solid(green), _solid(blue)], columns=2, thumb=4))
    assert grid.shape == (8, 8, 3)
    assert tuple(grid[0, 0]) == red and tuple(grid[0, 4]) == green and tuple(grid[4, 0]) == blue
    assert tuple(grid[4, 4]) == (255, 255, 255), "the cell after the last tile stays white"


def test_labels_add_a_strip_under_every_row_and_must_match_the_images() -> None:
    grid = image_grid([_solid((0, 0, 0))] * 2, columns=1, thumb=10, labels=["a", "b"])
    assert grid.size == (10, 2 * (10 + LABEL_H))
    with pytest.raises(ValueError, match="one label per image"):
        image_grid([_solid((0, 0, 0))] * 2, columns=1, labels=["a"])


def test_none_keeps_a_short_row_aligned() -> None:
    black = (0, 0, 0)
    grid = np.asarray(image_grid([_solid(black), None, _solid(black), _solid(black)], columns=2, thumb=4))
    assert tuple(grid[0, 4]) == (255, 255, 255), "a None cell is blank"
    assert tuple(grid[4, 0]) == black and tuple(grid[4, 4]) == black, "the next row starts in column one"


def test_own_size_tiles_with_gap_and_margin_place_panels_side_by_side() -> None:
    left, right = _solid((255, 0, 0), (30, 20)), _solid((0, 0, 255), (30, 20))
    sheet = image_grid([left, right], columns=2, thumb=None, gap=12, margin=(90, 20))
    assert sheet.size == (90 + 30 + 12 + 30, 20 + 20), "no resizing: each panel keeps its size"
    pixels = np.asarray(sheet)
    assert tuple(pixels[20, 90]) == (255, 0, 0) and tuple(pixels[39, 119]) == (255, 0, 0)
    assert (pixels[:, 120:132] == 255).all() and (pixels[:20] == 255).all() and (pixels[:, :90] == 255).all()
    assert tuple(pixels[20, 132]) == (0, 0, 255)
