"""bench/train.py's flow-matching mode on the CPU: ``--arch flux --tiny`` and ``--arch sd3 --tiny``.

Both runs start at once (each is a parent and two child processes, mostly import time), 1 warm-up + 2 timed steps
each, so the two take about half a minute together.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench" / "train.py"


def _start(tmp_path: Path, arch: str, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    result = tmp_path / f"{arch}.json"
    cmd = [sys.executable, str(BENCH), "--arch", arch, "--tiny", "--steps", "2", "--warmup-steps", "1",
           "--threads", "1", "--home", str(tmp_path / f"home-{arch}"), "--json", str(result), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, result


def test_tiny_flux_and_sd3_benchmarks_run_both_variants(tmp_path: Path) -> None:
    runs = {
        "flux": _start(tmp_path, "flux"),
        "sd3": _start(tmp_path, "sd3", "--gradient-checkpointing"),
    }
    for arch, (proc, result) in runs.items():
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"--arch {arch} --tiny failed:\n{output[-3000:]}"
        table = [line for line in output.splitlines() if line.startswith("| ")]
        assert [line.split("|")[1].strip() for line in table[2:]] == ["reference", "brandtune"], output
        assert "s/step" in table[0] and "first step s" in table[0]
        assert f"model builtin:tiny-{arch} transformer" in output
        assert "brandtune / reference: s/step" in output

        results = json.loads(result.read_text())["results"]
        ref, bt = results["reference"], results["brandtune"]
        for r in (ref, bt):
            assert "oom" not in r
            assert len(r["step_times"]) == 3  # 1 warm-up + 2 timed
            assert r["s_per_step"] > 0 and math.isfinite(r["s_per_step"])
            assert math.isfinite(r["final_loss"]) and r["final_loss"] > 0
            assert r["gradient_checkpointing"] is (arch == "sd3")
        # the same transformer and the same LoRA (brandtune's flow targets, rank 16) in both variants
        assert ref["params_m"] == bt["params_m"]
        assert ref["lora_params_m"] == bt["lora_params_m"] > 0
