"""bench/gpu.sh, the one command of a GPU session, run as a device session runs it but on the CPU (``DEVICE=cpu
TINY=1``): builtin:tiny's train row without and with torch.compile (``--compile regional``: its first step carries
the compile time, about 20-40 s of this test on two cores) and the campaign table (run_campaign against a plain
diffusers loop) on builtin:tiny and builtin:tiny-flux, 1 variation x 3 settings, 2 denoising steps.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_SH = REPO_ROOT / "bench" / "gpu.sh"
CPU = {"DEVICE": "cpu", "TINY": "1", "THREADS": "1", "TRAIN_STEPS": "2", "OMP_NUM_THREADS": "1",
       "CAMPAIGN_ARGS": "--variations 1 --steps 2 --train-steps 1", "PYTHON": sys.executable}  # fmt: skip


def _run(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # TMPDIR: train_gpu.sh's temporary BRANDTUNE_HOME in pytest's folder; inductor keeps its usual on-disk cache
    # (a warm cache compiles the tiny UNet's blocks in seconds instead of most of a minute)
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    )
    env = {"TMPDIR": str(out.parent), "TORCHINDUCTOR_CACHE_DIR": cache, **env}
    return subprocess.run(["bash", str(GPU_SH), str(out)], capture_output=True, text=True, timeout=400,
                          env={**os.environ, **CPU, **env}, cwd=REPO_ROOT)  # fmt: skip


def _table(log: str, header_start: str) -> list[list[str]]:
    """The rows (cells) of the first markdown table in ``log`` whose header starts with ``header_start``."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_gpu_script_runs_the_train_rows_with_and_without_compile_and_the_campaign_table(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = _run(out)
    log = (out / "gpu.log").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + log[-4000:]

    # the train rows: builtin:tiny without compile (reference and brandtune) and with regional compile
    assert "=== tiny 64px batch 1 compile none:" in log and "=== tiny 64px batch 1 compile regional:" in log
    runs = [json.loads(line) for line in (out / "train_gpu.jsonl").read_text().splitlines() if line.strip()]
    assert [r["args"]["compile"] for r in runs] == ["none", "regional"]
    assert list(runs[0]["results"]) == ["reference", "brandtune"] and list(runs[1]["results"]) == [
        "brandtune"
    ]
    for run in runs:
        for r in run["results"].values():
            assert len(r["step_times"]) == 2
            assert r["first_step_s"] == r["step_times"][0] > 0
    compiled = runs[1]["results"]["brandtune"]
    assert compiled["median_step_s"] == compiled["step_times"][1], (
        "the compiled median leaves out the first step"
    )
    # the compiled row's table has the compile column
    assert any(
        "first step s (compile)" in line for line in log.splitlines() if line.startswith("| variant |")
    )
    summary = _table(log, "| row | compile | variant |")
    assert [(row[1], row[2]) for row in summary] == [("none", "reference"), ("none", "brandtune"),
                                                     ("regional", "brandtune")]  # fmt: skip
    assert all(float(row[3]) > 0 and float(row[5]) > 0 for row in summary), summary

    # the campaign tables: brandtune's run_campaign (fused, batched) and the plain loop over the same images
    for part, images in (("campaign-sdxl", 3), ("campaign-flux", 3)):
        assert f"=== {part}: bench/campaign.py" in log
        results = json.loads((out / f"{part}.json").read_text())["results"]
        bt, plain = results["brandtune run_campaign (fused, batched)"], results["diffusers loop"]
        assert bt["images"] == plain["images"] == images
        assert (bt["calls"], plain["calls"]) == (1, images), (
            "brandtune batches; the loop calls once per image"
        )
        assert plain["mean_abs_diff"] < 1.0, "the loop must make the same images (prompts, seeds, scheduler)"
        for r in (bt, plain):
            assert r["s_per_image"] > 0 and math.isfinite(r["s_per_image"])
    rows = _table(log, "| variant | images | batch |")
    assert [row[0] for row in rows] == ["brandtune run_campaign (fused, batched)", "diffusers loop"]
    assert all(float(row[5]) > 0 for row in rows)  # s/image
    assert "device: cpu" in log and "torch threads 1" in log


def test_gpu_script_skips_what_the_budget_leaves_no_time_for_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(out, BUDGET_S="5", CAMPAIGN_RESERVE_S="0")
    log = (out / "gpu.log").read_text()
    assert proc.returncode == 0, log
    assert "=== tiny 64px batch 1 compile none skipped: the time budget is spent" in log
    assert "=== tiny 64px batch 1 compile regional skipped: the time budget is spent" in log
    assert "=== campaign-sdxl skipped: the time budget is spent" in log
    assert "=== campaign-flux skipped: the time budget is spent" in log
    assert "(no train row finished)" in log
