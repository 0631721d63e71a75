"""bench/train.py on builtin:tiny: both variants in their own child processes, the phase table of each child from
its spawn to its exit (two training steps; mostly import time), `brandtune train` timed as a user runs it, and
bench/phases.py's clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench" / "train.py"
sys.path.insert(0, str(REPO_ROOT / "bench"))

from phases import IMPORTS, PhaseClock, install_import_timer  # noqa: E402


def test_the_phase_clock_gives_each_moment_to_one_phase() -> None:
    import builtins
    import importlib

    saved = builtins.__import__, importlib.import_module
    clock = PhaseClock("other")
    try:
        install_import_timer(clock)

        class Work:
            @staticmethod
            def outer() -> None:
                time.sleep(0.05)
                Work.inner()
                import json as again  # noqa: F401  (already imported: a cheap import still counts as one)

            @staticmethod
            def inner() -> None:
                time.sleep(0.1)

        clock.wrap(Work, "inner", "inner")
        clock.wrap(Work, "outer", "outer")
        Work.outer()
    finally:
        builtins.__import__, importlib.import_module = saved
    totals = clock.snapshot()
    assert 0.1 <= totals["inner"] < 0.2
    assert 0.05 <= totals["outer"] < 0.1, "the inner phase is not counted again in the outer one"
    assert IMPORTS in totals and totals[IMPORTS] < 0.05
    assert clock.stack == ["other"]


def test_bench_train_prints_the_phase_table_of_both_variants(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--steps", "2", "--threads", "1", "--home", str(tmp_path / "home"),
           "--json", str(result)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = lines.index("| phase | reference | brandtune |")
    rows = {line.split("|")[1].strip(): line for line in lines[start + 2 :] if line.startswith("| ")}
    for phase in ("interpreter", "imports", "plan", "model load", "encode/cache", "loop", "save", "validation",
                  "exit", "**spawn to adapter on disk**", "spawn to exit", "peak RSS MiB"):  # fmt: skip
        assert phase in rows, (phase, proc.stdout)
    results = json.loads(result.read_text())["results"]
    # `brandtune train` as a user runs it: the command, timed from outside, its training process's peak apart
    cli = results.pop("brandtune-cli")
    assert cli["cli"].startswith("brandtune train --brand acme --config ")
    assert 0 < cli["wall_to_adapter_s"] <= cli["wall_to_exit_s"]
    assert cli["peak_rss_mib"] > 100 and cli["launcher_peak_rss_mib"] > 50, cli
    assert "| brandtune-cli |" in proc.stdout and "brandtune-cli / reference: spawn to adapter" in proc.stdout
    for name, r in results.items():
        total = sum(r["phases"].values())
        assert abs(total - r["wall_to_exit_s"]) < 0.05 * r["wall_to_exit_s"], (
            name,
            total,
            r["wall_to_exit_s"],
        )
        assert 0 < r["wall_to_adapter_s"] <= r["wall_to_exit_s"]
        assert len(r["step_times"]) == 2
