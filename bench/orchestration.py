"""What Prefect and MLflow add around `retrain`: total wall time vs the work measured inside the tasks.

Runs the `retrain` flow on the sample brand with the built-in tiny model against Prefect's ephemeral API and MLflow
on sqlite, in a fresh BRANDTUNE_HOME. The work is what the tasks time around the library calls (ingest, training
child process, registration, evaluation); the overhead is everything else in the flow run: task and flow state
transitions, parameter validation, the GPU concurrency slot, lineage tags, artifacts, result handling.

    .venv/bin/python bench/orchestration.py --steps 50 --repeats 2

The first flow run in a process also starts the ephemeral API; a warm-up flow takes that cost first and it is
reported on its own line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps")
    parser.add_argument("--seeds", type=int, default=2, help="evaluation seeds")
    parser.add_argument("--eval-steps", type=int, default=10, help="sampler steps in evaluation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (training and evaluation)")
    parser.add_argument("--repeats", type=int, default=2, help="retrain runs")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    os.environ.update(
        {
            "BRANDTUNE_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "BRANDTUNE_BRANDS_DIR": str(REPO / "data" / "brands"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "OMP_NUM_THREADS": str(args.threads),
        }
    )
    import torch

    torch.set_num_threads(args.threads)
    from prefect import flow

    from flows.retrain import retrain_flow

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    start = time.perf_counter()
    warm_up()
    print(f"ephemeral Prefect API start + first flow run: {time.perf_counter() - start:.1f} s")

    rows = []
    for i in range(args.repeats):
        start = time.perf_counter()
        result = retrain_flow(
            brand="acme",
            training={
                "max_train_steps": args.steps,
                "num_threads": args.threads,
                "seed": i,
                "checkpointing_steps": max(args.steps // 2, 1),
                "validation_inference_steps": args.eval_steps,
            },
            evaluation={
                "seeds": list(range(args.seeds)),
                "sampler": {"num_inference_steps": args.eval_steps},
            },
        )
        wall = time.perf_counter() - start
        rows.append((i + 1, wall, result["timings"], result["promoted"]))

    print(
        f"\nretrain on acme, builtin:tiny, {args.steps} steps, {args.seeds} eval seeds, {args.threads} threads"
    )
    head = (
        f"{'run':>3} {'wall s':>8} {'ingest':>7} {'train':>7} {'register':>8} {'evaluate':>8} {'work s':>7} "
    )
    print(head + f"{'overhead s':>10} {'share':>6}")
    for run, wall, t, _ in rows:
        work = sum(t.values())
        over = wall - work
        print(
            f"{run:>3} {wall:>8.1f} {t['ingest_s']:>7.1f} {t['train_s']:>7.1f} {t['register_s']:>8.1f} "
            f"{t['evaluate_s']:>8.1f} {work:>7.1f} {over:>10.1f} {over / wall:>6.1%}"
        )
    verdict = all((w - sum(t.values())) < min(15.0, 0.10 * w) for _, w, t, _ in rows)
    print(f"\ntarget (overhead < 10% of wall and < 15 s): {'met' if verdict else 'NOT met'}")


if __name__ == "__main__":
    main()
