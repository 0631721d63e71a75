"""Per-image cost of the weight-free evaluation metrics at 64 px and 512 px.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/eval_metrics.py
Prints a table: median milliseconds per image for score_image (palette + 24 references + technical checks),
each part alone, and score_set over 16 images (120 pairs).
"""

from __future__ import annotations

import os
import statistics
import time

from brandtune.evaluation.metrics import (
    Palette,
    ReferenceSet,
    palette_adherence,
    prepare,
    reference_similarity,
    score_image,
    score_set,
    technical_check,
)
from brandtune.synthetic import ACME_PRODUCT, Scene, render_scene

SETTINGS = ("beach", "snow", "studio", "kitchen")


def median_ms(fn, repeat: int = 40) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    palette = Palette.from_hex(["#1fa6a0", "#f28c28"], ["#f4efe3", "#ffffff"])
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(
        f"{'size':>5} {'score_image':>12} {'prepare':>8} {'palette':>8} {'refs(24)':>9} {'technical':>10} {'set(16)':>8}"
    )
    for size in (64, 512):
        row(size, palette)


def row(size: int, palette: Palette) -> None:
    """One table row: timings at one image size."""
    refs = ReferenceSet.from_images(
        [render_scene(Scene(ACME_PRODUCT, s, i), size) for s in SETTINGS for i in range(6)]
    )
    img = render_scene(Scene(ACME_PRODUCT, "beach", 100), size)
    batch = [render_scene(Scene(ACME_PRODUCT, "beach", i), size) for i in range(16)]
    total = median_ms(lambda: score_image(img, palette=palette, references=refs))
    prep = median_ms(lambda: prepare(img))
    pal = median_ms(lambda: palette_adherence(prepare(img), palette)) - prep
    ref = median_ms(lambda: reference_similarity(prepare(img), refs)) - prep
    tech = median_ms(lambda: technical_check(prepare(img))) - prep
    set_ms = median_ms(lambda: score_set(batch), repeat=5)
    print(f"{size:>5} {total:>12.1f} {prep:>8.1f} {pal:>8.1f} {ref:>9.1f} {tech:>10.1f} {set_ms:>8.1f}")


if __name__ == "__main__":
    main()
