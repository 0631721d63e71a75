"""The per-brand shared paths (brandtune.ingest.pointers) with real processes: LATEST only moves forward to a
complete dataset, no failure report is lost, and a SIGKILL between the two LATEST files is repaired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ingest_helpers import make_photos

from brandtune.ingest import find_dataset
from brandtune.ingest.pointers import (
    FAILED_REPORT,
    LATEST,
    LATEST_RECORD,
    Attempt,
    advance_latest,
    pointers_lock,
    read_latest,
)
from brandtune.settings import Settings

# One ingest of the acme brand in a fresh process: argv = photo folder, min_images; prints the fingerprint.
CHILD = """
import json, sys
from pathlib import Path
from brandtune.config import BrandSpec, IngestConfig
from brandtune.errors import IngestError
from brandtune.ingest import ingest
brand = BrandSpec(name="acme", trigger="acme", subject="bottle", palette=["#1fa6a0"],
                  evaluation_prompts=["a photo of {trigger} {subject}"])
cfg = IngestConfig.for_brand(brand, min_images=int(sys.argv[2]), workers=1)
try:
    result = ingest(brand, Path(sys.argv[1]), cfg, progress=False)
except IngestError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"fingerprint": result.fingerprint}))
"""


def _start(home: Path, photos: Path, min_images: int = 1, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(photos), str(min_images)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BRANDTUNE_HOME": str(home), **env},
    )  # fmt: skip


def _wait_for(what: str, check, limit: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _result(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1])


def _datasets(root: Path) -> int:
    return sum(1 for p in root.glob("*/manifest.json")) if root.is_dir() else 0


def test_two_ingests_finishing_together_leave_latest_on_the_newer_complete_dataset(tmp_path: Path) -> None:
    """Both ingests finish their datasets while the pointer lock is held, so both race for LATEST the moment it is
    released; whichever takes it first, LATEST ends on the one that started later, and never torn."""
    home = tmp_path / "home"
    root = Settings(home=home).datasets_dir / "acme"
    first, second = (
        make_photos(tmp_path / "a", 4, seed=1)[0].parent,
        make_photos(tmp_path / "b", 4, seed=2)[0].parent,
    )
    with pointers_lock(root):
        older = _start(home, first)
        _wait_for("the first dataset", lambda: _datasets(root) == 1)
        newer = _start(home, second)
        _wait_for("the second dataset", lambda: _datasets(root) == 2)
    older_fp, newer_fp = _result(older)["fingerprint"], _result(newer)["fingerprint"]
    assert older_fp != newer_fp
    assert (root / LATEST).read_text() == newer_fp + "\n"
    record = json.loads((root / LATEST_RECORD).read_text())
    assert record["fingerprint"] == newer_fp and record["attempt"]["pid"] == newer.pid
    assert find_dataset("acme", settings=Settings(home=home)) == root / newer_fp
    assert (root / older_fp / "manifest.json").is_file() and (root / newer_fp / "manifest.json").is_file()


def test_latest_never_moves_back_to_an_older_attempt(tmp_path: Path) -> None:
    root = tmp_path / "acme"
    old, new = Attempt(1_000, "host", 1), Attempt(2_000, "host", 2)
    assert advance_latest(root, "newfp", new) is True
    (root / LATEST).write_text("stale\n")  # as a crash between the two files leaves it
    assert advance_latest(root, "oldfp", old) is False
    assert read_latest(root) == "newfp" and (root / LATEST).read_text() == "newfp\n"  # and repaired
    assert advance_latest(root, "oldfp", Attempt(3_000, "host", 3)) is True  # a newer re-ingest moves it
    assert read_latest(root) == "oldfp"


def test_concurrent_failures_each_keep_their_report(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = Settings(home=home).datasets_dir / "acme"
    folders = [make_photos(tmp_path / name, 2, seed=i)[0].parent for i, name in enumerate("ab")]
    with pointers_lock(root):
        procs = [_start(home, folder, min_images=4) for folder in folders]
        _wait_for("two own reports", lambda: len(list(root.glob("failed-report-*.json"))) == 2)
    errors = [_result(p)["error"] for p in procs]
    own = sorted(root.glob("failed-report-*.json"))
    assert len(own) == 2 and all(any(str(path) in e for e in errors) for path in own)
    reports = [json.loads(p.read_text()) for p in own]
    assert sorted(r["sources"][0] for r in reports) == sorted(str(f) for f in folders)
    newest = max(reports, key=lambda r: r["attempt"]["started_ns"])
    assert json.loads((root / FAILED_REPORT).read_text()) == newest
    assert all("2 photo(s) accepted, at least 4 needed" in e and "\n" not in e for e in errors)


def test_sigkill_between_the_latest_files_is_read_right_and_repaired(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = Settings(home=home).datasets_dir / "acme"
    first, second = (
        make_photos(tmp_path / "a", 4, seed=1)[0].parent,
        make_photos(tmp_path / "b", 4, seed=2)[0].parent,
    )
    first_fp = _result(_start(home, first))["fingerprint"]
    killed = _start(home, second, BRANDTUNE_FAULT="ingest.latest_between_files")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    second_fp = json.loads((root / LATEST_RECORD).read_text())["fingerprint"]
    assert second_fp != first_fp and (root / second_fp / "manifest.json").is_file()
    assert (root / LATEST).read_text() == first_fp + "\n"  # the plain file is one step behind ...
    assert (
        find_dataset("acme", settings=Settings(home=home)) == root / second_fp
    )  # ... readers use the record
    assert _result(_start(home, second))["fingerprint"] == second_fp  # the re-run reuses and repairs
    assert (root / LATEST).read_text() == second_fp + "\n"


def test_sigkill_before_latest_moves_leaves_the_old_pointer_and_a_complete_dataset(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = Settings(home=home).datasets_dir / "acme"
    first, second = (
        make_photos(tmp_path / "a", 4, seed=1)[0].parent,
        make_photos(tmp_path / "b", 4, seed=2)[0].parent,
    )
    first_fp = _result(_start(home, first))["fingerprint"]
    killed = _start(home, second, BRANDTUNE_FAULT="ingest.before_latest")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert read_latest(root) == first_fp and (root / LATEST).read_text() == first_fp + "\n"
    assert (
        _datasets(root) == 2
    )  # the new dataset is complete; re-running the ingest reuses it and moves LATEST
    second_fp = _result(_start(home, second))["fingerprint"]
    assert read_latest(root) == second_fp != first_fp


def test_doctor_finds_and_repairs_a_pointer_left_behind(tmp_path: Path) -> None:
    from brandtune.ingest.pointers import STALE_STAGING_S, check

    settings = Settings(home=tmp_path / "home")
    root = settings.datasets_dir / "acme"
    (root / "fp1").mkdir(parents=True)
    (root / "fp1" / "manifest.json").write_text("{}")
    assert advance_latest(root, "fp1", Attempt(1, "h", 1))
    assert check(settings, fix=False) == []
    (root / LATEST).write_text("stale\n")
    stale = root / ".tmp-ingest-dead"
    stale.mkdir()
    os.utime(stale, (time.time() - STALE_STAGING_S - 60,) * 2)
    (root / ".tmp-ingest-running").mkdir()
    found = check(settings, brand="acme", fix=False)
    assert [f.check for f in found] == ["dataset-pointer", "dataset-staging"] and not any(
        f.fixed for f in found
    )
    fixed = check(settings, brand="acme", fix=True)
    assert all(f.fixed for f in fixed) and (root / LATEST).read_text() == "fp1\n"
    assert not stale.exists() and (root / ".tmp-ingest-running").exists()
    assert check(settings, fix=False) == []
    advance_latest(root, "gone", Attempt(2, "h", 2))
    (missing,) = check(settings, fix=True)
    assert "names dataset gone, which is missing" in missing.problem and not missing.fixed
