"""Aspect-ratio buckets: every photo trains at about the training resolution's area in the shape nearest its own.

Candidate sizes (:func:`bucket_sizes`) have both sides a multiple of the family's resolution multiple (VAE factor x
UNet downsampling or transformer patching), an area of at most ``resolution**2`` (each width takes the tallest
height that fits), and an aspect ratio within ``1/max_aspect .. max_aspect``; the square ``resolution x resolution``
is always one. Each photo goes to the bucket whose aspect is nearest its own on a log scale
(:func:`assign_buckets`); it is then resized to cover the bucket and centre-cropped by what is left over, which is
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


def bucket_sizes(resolution: int, multiple: int, max_aspect: float) -> list[Size]:
    """The candidate (width, height) buckets at ``resolution``, sorted by aspect (portrait first)."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for w in range(multiple, area // multiple + 1, multiple):
        h = area // w // multiple * multiple
        if h >= multiple and 1 / max_aspect <= w / h <= max_aspect:
            sizes.add((w, h))
    return sorted(sizes, key=lambda s: (s[0] / s[1], -s[0] * s[1]))


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect is nearest ``size``'s (log ratio); among equals the largest, then the squarest."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1], abs(b[0] - b[1])))


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


def dataset_is_square(folder: Path) -> bool:
    """Whether every image of a dataset folder is square (then buckets change nothing)."""
    import json

    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return True
    names = [json.loads(line)["file_name"] for line in meta.read_text(encoding="utf-8").splitlines()]
    files = [folder / n for n in names if (folder / n).is_file()]
    return all(w == h for w, h in image_sizes(files))
