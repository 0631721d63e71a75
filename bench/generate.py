"""Generation throughput: base pipeline vs adapter unfused vs adapter fused, and where an evaluation job's time goes.

Everything runs in one process on the built-in model, in a temporary BRANDTUNE_HOME: the sample brand is ingested,
an adapter is trained for a few steps and registered, then each variant generates the same prompts and seeds.

    .venv/bin/python bench/generate.py --threads 2 --images 16 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _setup(home: Path, train_steps: int, threads: int) -> str:
    os.environ["BRANDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("BRANDTUNE_BRANDS_DIR", str(REPO / "data" / "brands"))
    from brandtune.config import load_brand
    from brandtune.ingest import ingest
    from brandtune.registry import register
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    ingest(load_brand("acme"), REPO / "data" / "brands" / "acme" / "photos", progress=False)
    result = train(
        TrainConfig(
            brand="acme",
            max_train_steps=train_steps,
            checkpointing_steps=0,
            validation_inference_steps=2,
            learning_rate=1e-2,
            num_threads=threads,
        )
    )
    version = register("acme", result.mlflow_run_id)
    return version.version


def _rate(pipe, images: int, batch: int, steps: int) -> float:
    """Images per second generating ``images`` images in batches of ``batch``."""
    from brandtune.config import SamplerConfig
    from brandtune.sampling import sample_batch

    sampler = SamplerConfig(num_inference_steps=steps)
    prompts = ["a photo of acme bottle on a beach"] * batch
    t0 = time.perf_counter()
    for start in range(0, images, batch):
        n = min(batch, images - start)
        sample_batch(pipe, prompts[:n], list(range(start, start + n)), sampler)
    return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=16, help="Images per measurement.")
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps.")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Interleaved measurements per variant; the median is shown."
    )
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        version = _setup(Path(tmp), args.train_steps, args.threads)
        from brandtune.models import load_base_pipeline, resolve_base
        from brandtune.registry import load_pipeline
        from brandtune.sampling import apply_scheduler

        uri = f"models:/acme-lora/{version}"
        variants = {
            "base (no adapter)": lambda: load_base_pipeline(resolve_base("builtin:tiny")),
            "adapter, unfused": lambda: load_pipeline(uri, fuse=False),
            "adapter, fused": lambda: load_pipeline(uri, fuse=True),
        }
        pipes = {name: make() for name, make in variants.items()}
        for pipe in pipes.values():
            apply_scheduler(pipe, "ddim")
            _rate(pipe, 2, 2, 2)  # warm-up
        # Interleaved: every repeat measures every variant once, so load on a shared machine hits all alike.
        samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in pipes for b in (1, 8)}
        for _ in range(args.repeats):
            for (name, batch), rates in samples.items():
                rates.append(_rate(pipes[name], args.images, batch, args.steps))
        rows = [(name, batch, statistics.median(rates)) for (name, batch), rates in samples.items()]
        base = {b: r for n, b, r in rows if n.startswith("base")}
        print(
            f"machine: {platform.machine()} {platform.processor() or ''}, cpus={os.cpu_count()}, "
            f"torch threads={torch.get_num_threads()}, torch {torch.__version__}, "
            f"{args.steps} DDIM steps, 64 px, median of {args.repeats}"
        )
        print("| variant | batch | images/s | vs base |\n| --- | ---: | ---: | ---: |")
        for name, batch, rate in rows:
            print(f"| {name} | {batch} | {rate:.2f} | {rate / base[batch]:.3f}x |")

        from brandtune.config import EvalConfig, SamplerConfig
        from brandtune.evaluation.job import evaluate

        t0 = time.perf_counter()
        outcome = evaluate(
            EvalConfig(
                brand="acme",
                candidate=version,
                sampler=SamplerConfig(num_inference_steps=args.steps),
                output_dir=Path(tmp) / "eval",
            )
        )
        total = time.perf_counter() - t0
        t = outcome.timings
        print(f"\nevaluation job (candidate + base, 4 prompts x 4 seeds, {args.steps} steps): {total:.1f} s")
        print("| part | s | share |\n| --- | ---: | ---: |")
        for part in ("generate_s", "score_s"):
            print(f"| {part[:-2]} | {t[part]:.2f} | {t[part] / t['total_s']:.1%} |")
        rest = t["total_s"] - t["generate_s"] - t["score_s"]
        print(f"| report, MLflow, registry | {rest:.2f} | {rest / t['total_s']:.1%} |")


if __name__ == "__main__":
    main()
