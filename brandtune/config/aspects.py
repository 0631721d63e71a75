"""Aspect ratios ("W:H"): parsing, bounds and the pixel size of an aspect at a model's square area.

Shared by brand.yaml's ``aspects``, the campaign and evaluation configs, and the trainer's buckets.
"""

from __future__ import annotations

import re

#: The widest aspect ratio (long side / short side) a brand may ask for: the trainer's bucket bounds, 1:3 .. 3:1.
MAX_ASPECT_RATIO = 3.0
_ASPECT_RE = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_aspect(text: str) -> tuple[int, int]:
    """``"W:H"`` as ``(W, H)``: positive integers whose ratio is within 1:3 .. 3:1 (:data:`MAX_ASPECT_RATIO`).

    Raises:
        ValueError: another format, a zero side or a ratio out of bounds (one line naming the value).
    """
    match = _ASPECT_RE.fullmatch(str(text))
    if not match:
        raise ValueError(f"aspect {text!r} is not 'W:H' with whole numbers, e.g. '2:3' or '16:9'")
    w, h = int(match[1]), int(match[2])
    if w == 0 or h == 0:
        raise ValueError(f"aspect {text!r} has a zero side; use positive numbers, e.g. '2:3'")
    if max(w / h, h / w) > MAX_ASPECT_RATIO + 1e-9:
        raise ValueError(
            f"aspect {text!r} is wider than 1:3 .. 3:1, the trainer's bounds; use e.g. '1:3' or '3:1'"
        )
    return w, h


def format_aspect(width: int, height: int) -> str:
    """``"W:H"``."""
    return f"{width}:{height}"


def normalise_aspects(value: list[str]) -> list[str]:
    """Aspects as ``"W:H"``, each valid (:func:`~brandtune.config.aspects.parse_aspect`) and listed once.

    Raises:
        ValueError: an empty list, a malformed aspect or one listed twice.
    """
    if not value:
        raise ValueError(
            "aspects is an empty list; give at least one, e.g. ['1:1'], or leave it empty (null)"
        )
    out = [format_aspect(*parse_aspect(text)) for text in value]
    dupes = sorted({a for a in out if out.count(a) > 1})
    if dupes:
        raise ValueError(f"aspects {dupes} are listed twice; keep one of each")
    return out


def aspect_size(aspect: str, side: int, multiple: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``aspect`` at about the area of a ``side`` x ``side`` square.

    The exact sides are ``side * sqrt(r)`` by ``side / sqrt(r)`` (``r = W/H``, same area as the square); each is
    then rounded on its own to the nearest multiple of ``multiple`` (halves round up), and is at least one
    ``multiple``; a square aspect is ``side`` x ``side`` itself. With a 64 px base and
    multiple 16 (builtin:tiny), ``"2:3"`` gives 48 x 80 (exact 52.3 x 78.4) and ``"16:9"`` 80 x 48 (85.3 x 48.0):
    each side is the nearest the grid allows, so the area can be ~10% off the square's on a coarse grid (2:3 at
    512 px, multiple 64: 448 x 640, exact 418.0 x 627.1).

    Args:
        aspect: ``"W:H"`` (see :func:`parse_aspect`).
        side: The model's square size in px (its native size, or the training resolution).
        multiple: The family's size multiple (VAE factor x downsampling or patch; see
            :func:`brandtune.sampling.size_multiple`).

    Raises:
        ValueError: a malformed aspect, or ``side`` / ``multiple`` not positive.
    """
    import math

    if side < 1 or multiple < 1:
        raise ValueError(
            f"aspect_size needs a positive side and multiple, got side={side}, multiple={multiple}"
        )
    w, h = parse_aspect(aspect)
    if w == h:  # the square is the side itself, on the grid or not: a brand without aspects samples as it did
        return side, side
    root = math.sqrt(w / h)

    def snap(x: float) -> int:
        return max(multiple, math.floor(x / multiple + 0.5) * multiple)

    return snap(side * root), snap(side / root)
