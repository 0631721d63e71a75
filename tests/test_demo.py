"""The demo's before/after sheet: labels are drawn in a TrueType font, so the words keep their spaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from brandtune.demo import before_after


def _campaign(folder: Path, colour: tuple[int, int, int]) -> Path:
    folder.mkdir()
    rows = []
    for setting in ("beach", "snow"):
        for seed in range(2):
            name = f"{setting}_{seed}.png"
            Image.new("RGB", (64, 64), colour).save(folder / name)
            rows.append({"setting": setting, "seed": seed, "file": name})
    (folder / "manifest.json").write_text(json.dumps({"images": rows}))
    return folder


def _ink_runs(strip: np.ndarray, min_gap: int) -> int:
    """Groups of inked columns separated by at least ``min_gap`` blank columns (words, for a text strip)."""
    inked = (strip < 200).any(axis=0)
    runs, blank = 0, min_gap
    for ink in inked:
        if ink:
            runs += blank >= min_gap
            blank = 0
        else:
            blank += 1
    return runs


def test_before_after_labels_keep_their_spaces(tmp_path: Path) -> None:
    base = _campaign(tmp_path / "base", (200, 120, 40))
    adapter = _campaign(tmp_path / "adapter", (0, 128, 128))
    out = before_after(base, adapter, tmp_path / "before_after.png")
    with Image.open(out) as img:
        sheet = np.asarray(img.convert("L"))
    left, cell = 90, 96
    header = sheet[:20, left : left + 2 * cell]  # "base model (no adapter)" above the base model's column
    assert _ink_runs(header, min_gap=3) == 4, "expected the four words of 'base model (no adapter)'"
    assert (sheet[20:, left : left + 2 * cell] < 255).any()  # the tiles are there
