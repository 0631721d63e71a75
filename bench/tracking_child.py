"""The training child before and after tracking left it: peak RSS and import time of ``python -m brandtune.training``.

    .venv/bin/python bench/tracking_child.py --before /path/to/older/checkout [--steps 100 --threads 2 --reps 2]

Each variant trains the same config (builtin:tiny, the sample brand, 64 px, batch 4, rank 4, fp32, sqlite store)
in a fresh ``python -X importtime -m brandtune.training`` child whose ``PYTHONPATH`` is that checkout; a warm-up
training first builds the base and the latent cache, so both variants start warm. Per child: peak RSS
(``VmHWM`` of the child itself: ``ru_maxrss`` would carry the parent's over ``exec``; the sidecar forwarder, a process of its own, is shown beside it), the summed
cumulative time of its top-level imports and of ``mlflow`` among them (``-X importtime``), and the wall from start
to exit. Prints a table with the thread count, the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRAPPER = r"""
import json, re, resource, runpy, sys, time
t0 = time.perf_counter()
out, sys.argv = sys.argv[1], ["brandtune.training", "--config", sys.argv[2]]
try:
    runpy.run_module("brandtune.training", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
json.dump({"code": code, "wall_s": time.perf_counter() - t0, "mlflow": "mlflow" in sys.modules,
           "rss_mb": int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024,
           "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, open(out, "w"))
"""
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _imports(stderr: str) -> tuple[float, float]:
    """Seconds of all top-level imports, and of mlflow's, from ``-X importtime`` output."""
    total = mlflow = 0
    for _self_us, cumulative, indent, name in _LINE.findall(stderr):
        if not indent:
            total += int(cumulative)
            mlflow += int(cumulative) if name == "mlflow" else 0
    return total / 1e6, mlflow / 1e6


def _child(tree: Path, config: Path, env: dict[str, str], out: Path) -> dict:
    cmd = [sys.executable, "-X", "importtime", "-c", WRAPPER, str(out), str(config)]
    # (run in the checkout: ``-c`` puts the working directory first on sys.path)
    proc = subprocess.run(
        cmd, env={**env, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True, timeout=1800
    )
    result = json.loads(out.read_text())
    if result["code"] not in (0, None):
        raise SystemExit(f"training failed in {tree}:\n{proc.stderr[-3000:]}")
    result["imports_s"], result["mlflow_import_s"] = _imports(proc.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="A checkout whose trainer imports mlflow.")
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "BRANDTUNE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               "OMP_NUM_THREADS": str(args.threads), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
               "BRANDTUNE_BRANDS_DIR": str(args.after / "data" / "brands")}  # fmt: skip
        env.pop("BRANDTUNE_FORWARDER", None)
        brand = args.after / "data" / "brands" / "acme"
        ingest = (
            "from pathlib import Path; from brandtune.config import load_brand; from brandtune.ingest import ingest; "
            f"ingest(load_brand(Path({str(brand)!r})), Path({str(brand / 'photos')!r}), progress=False)"
        )
        subprocess.run(
            [sys.executable, "-c", ingest],
            env={**env, "PYTHONPATH": str(args.after)},
            cwd=args.after,
            check=True,
        )
        config = home / "train.json"
        config.write_text(json.dumps({"brand": "acme", "max_train_steps": args.steps, "train_batch_size": 4,
                                      "rank": 4, "resolution": 64, "num_threads": args.threads,
                                      "checkpointing_steps": 0, "mixed_precision": "no"}))  # fmt: skip
        _child(args.after, config, env, home / "warmup.json")
        rows: dict[str, list[dict]] = {"before": [], "after": []}
        for rep in range(args.reps):
            for name, tree in (("before", args.before), ("after", args.after)):
                rows[name].append(_child(tree, config, env, home / f"{name}-{rep}.json"))
    load = os.getloadavg()[0]
    assert rows["before"][0]["mlflow"] and not rows["after"][0]["mlflow"], (
        "the checkouts are the wrong way round"
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    print(f"\n{platform.node()}: {cpu}, {os.cpu_count()} cores, {args.threads} threads, load {load:.1f}; "
          f"{args.steps} steps, batch 4, 64 px, rank 4, fp32; median of {args.reps}")  # fmt: skip
    print(
        "| training child | mlflow imported | peak RSS MiB | imports s | of which mlflow s | wall s | sidecar RSS MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in ("rss_mb", "imports_s", "mlflow_import_s", "wall_s")
        }
        side = statistics.median(r["children_rss_mb"] for r in runs) if name == "after" else 0
        print(f"| {name} | {runs[0]['mlflow']} | {med['rss_mb']:.0f} | {med['imports_s']:.2f} | "
              f"{med['mlflow_import_s']:.2f} | {med['wall_s']:.1f} | {side:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
