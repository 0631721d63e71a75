"""Aspect-ratio buckets: every photo trains at about the training resolution's area in the shape nearest its own.

Candidate sizes (:func:`bucket_sizes`) have both sides a multiple of the family's resolution multiple (VAE factor x
UNet downsampling or transformer patching), an area between :data:`MIN_AREA_SHARE` of ``resolution**2`` and all of
it, and an aspect ratio within ``1/max_aspect .. max_aspect``; the square ``resolution x resolution`` is always
one. The lower areas matter on a coarse grid: at 64 px in multiples of 16 a 3:4 photo trains at 48x64 instead of
losing a fifth of its width to 48x80. Each photo goes to the bucket that loses the least of it (:func:`nearest_bucket`,
:func:`assign_buckets`); it is then resized to cover the bucket and centre-cropped by what is left over, which is
little since the aspects are close (:func:`crop_fraction`). A square photo lands in the square bucket, so a square
dataset trains exactly as without buckets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height) in px
#: The smallest bucket area, as a share of ``resolution**2``.
MIN_AREA_SHARE = 0.7
#: What giving up a share of the area costs against cropping the same share of a side (:func:`nearest_bucket`).
AREA_PENALTY = 0.5


def bucket_sizes(resolution: int, multiple: int, max_aspect: float) -> list[Size]:
    """The candidate (width, height) buckets at ``resolution``, sorted by aspect (portrait first)."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for w in range(multiple, area // multiple + 1, multiple):
        for h in range(area // w // multiple * multiple, 0, -multiple):
            if w * h < MIN_AREA_SHARE * area:
                break
            if 1 / max_aspect <= w / h <= max_aspect:
                sizes.add((w, h))
    return sorted(sizes, key=lambda s: (s[0] / s[1], -s[0] * s[1]))


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket that loses the least of the photo: the share a centre crop cuts away plus
    :data:`AREA_PENALTY` times the share of the largest bucket's area it gives up; among equals the squarest.

    On a fine grid a full-area bucket of nearly the photo's aspect always wins (a crop of a percent or two); on a
    coarse one a smaller bucket of the photo's exact aspect beats cutting a fifth of its width away.
    """
    largest = max(w * h for w, h in buckets)
    return min(
        buckets,
        key=lambda b: (
            crop_fraction(size, b) + AREA_PENALTY * (1 - b[0] * b[1] / largest),
            abs(math.log(b[0] / b[1])),
        ),
    )


def crop_fraction(size: Size, bucket: Size) -> float:
    """The share of the photo's width or height that covering ``bucket`` and centre-cropping cuts away."""
    a, b = size[0] / size[1], bucket[0] / bucket[1]
    return 1.0 - min(a / b, b / a)


def image_sizes(files: Sequence[Path]) -> list[Size]:
    """The stored pixel sizes of ``files`` (headers only)."""
    from PIL import Image

    sizes = []
    for file in files:
        with Image.open(file) as img:
            sizes.append(img.size)
    return sizes


def assign_buckets(
    files: Sequence[Path], resolution: int, multiple: int, max_aspect: float | None
) -> list[Size]:
    """The training size of each image: its nearest bucket, or the square at ``resolution`` when
    ``max_aspect`` is None (buckets off: centre crops, as before buckets)."""
    if max_aspect is None:
        return [(resolution, resolution)] * len(files)
    buckets = bucket_sizes(resolution, multiple, max_aspect)
    sizes = image_sizes(files)
    chosen = [nearest_bucket(s, buckets) for s in sizes]
    if any(c != (resolution, resolution) for c in chosen):
        worst = max(crop_fraction(s, c) for s, c in zip(sizes, chosen, strict=True))
        counts = {c: chosen.count(c) for c in dict.fromkeys(chosen)}
        logger.info(
            "aspect buckets: %s; the most any crop cuts from a side: %.1f%%",
            ", ".join(f"{w}x{h}: {n}" for (w, h), n in counts.items()),
            100 * worst / 2,
        )
    return chosen


def all_square(files: Sequence[Path]) -> bool:
    """Whether every one of ``files`` is a square image (then buckets change nothing)."""
    return all(w == h for w, h in image_sizes(files))
