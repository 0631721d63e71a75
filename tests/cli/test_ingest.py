"""``brandtune ingest`` (brandtune.cli.ingest) through the real entry point, in a fresh BRANDTUNE_HOME."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _folder(out: str) -> Path:
    """The dataset folder of ``dataset <brand>/<fingerprint> (...)``, the first line an ingest prints."""
    brand, fingerprint = out.split()[1].split("/")
    return Path(os.environ["BRANDTUNE_HOME"]) / "datasets" / brand / fingerprint


def _side(folder: Path) -> int:
    """The side of the square with the area of the dataset's first image (crop 'keep': about the resolution)."""
    name = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    with Image.open(folder / name) as img:
        return round((img.width * img.height) ** 0.5)


def test_ingest_the_brands_photos(home: Path, run_cli: RunCli) -> None:
    code, out, err = run_cli(["ingest", "-b", "acme"])
    assert code == 0, err
    assert "(new dataset)" in out and "24 accepted, 0 rejected" in out
    assert "masks:    12 alpha, 12 file" in out  # the cutouts' alpha, the studio and city shots' mask files
    assert (_folder(out) / "report.html").is_file() and "sheet:" in out and "report.html" in out
    assert _folder(out).parent == home / "datasets" / "acme" and (_folder(out) / "report.json").is_file()
    code, out, _ = run_cli(["ingest", "-b", "acme"])
    assert code == 0 and "(reused existing dataset)" in out


def test_config_file_then_flags(home: Path, tmp_path: Path, run_cli: RunCli) -> None:
    config = tmp_path / "ingest.yaml"
    config.write_text("resolution: 48\nmin_images: 1000\n")
    code, out, err = run_cli(["ingest", "-b", "acme", "--config", str(config)])
    assert code == 2 and out == "" and "at least 1000 needed" in err, err  # the file applies
    code, out, err = run_cli(["ingest", "-b", "acme", "--config", str(config), "--min-images", "2"])
    assert code == 0, err  # the flag beats the file; the file's resolution stays
    assert _side(_folder(out)) == 48
    code, out, err = run_cli(
        ["ingest", "-b", "acme", "--config", str(config), "--min-images", "2", "--resolution", "40"]
    )
    assert code == 0, err
    assert _side(_folder(out)) == 40
    config.write_text("resolution: 10\n")
    code, _, err = run_cli(["ingest", "-b", "acme", "--config", str(config)])
    assert code == 2 and err.startswith(f"error: {config}: resolution: ") and len(err.splitlines()) == 1, err
