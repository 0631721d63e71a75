"""Plain helpers of the ingest tests (tests/ingest/): photo folders made on the fly, the committed bad inputs and a
dataset's rejections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bad"


def make_photos(folder: Path, count: int, size: tuple[int, int] = (160, 128), seed: int = 0) -> list[Path]:
    """Distinct, structured photos (blurred noise: perceptual hashes far apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        path = folder / f"photo_{i:02d}.png"
        img.save(path)
        paths.append(path)
    return paths


def rejections(result_path: Path) -> dict[str, str]:
    report = json.loads((result_path / "report.json").read_text())
    return {Path(r["source"].split("!")[-1]).name: r["reason"] for r in report["rejected"]}
