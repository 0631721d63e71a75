"""Does an EMA of the adapter weights steady the demo's result across training seeds?

Trains the demo's LoRA (builtin:tiny with its shipped recommendation, on the acme photos, as
tests/models/test_builtin_quality.py ``_demo_train_config``) for each training seed, without EMA and with each
decay asked for, and scores each adapter as ``test_brand_lora_learns_the_palette_and_keeps_the_settings`` does: the
mean CIEDE2000 palette distance to the brand over the brand's 4 evaluation prompts x sampling seeds 0-3, beside the
base model's. Everything runs in one process in a temporary BRANDTUNE_HOME.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ema_seeds.py                       # seeds 0 1 2, decay 0.99
    OMP_NUM_THREADS=1 .venv/bin/python bench/ema_seeds.py --seeds 0 1 2 3 --decays 0.99 0.995

Prints a row per training as it finishes, then per variant the mean, standard deviation (ddof 1) and range of the
palette distance and of its ratio to the base's across the training seeds (lower ratio: more of the brand).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Sampling seeds per evaluation prompt, as in the demo's acceptance test.
SAMPLE_SEEDS = range(4)


def _setup(home: Path) -> str:
    """A fresh BRANDTUNE_HOME with the acme photos ingested; returns the dataset fingerprint."""
    os.environ["BRANDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("BRANDTUNE_BRANDS_DIR", str(REPO / "data" / "brands"))
    from brandtune.config import load_brand
    from brandtune.ingest import ingest

    return ingest(load_brand("acme"), REPO / "data" / "brands" / "acme" / "photos", progress=False).path.name


def _palette_de(pipe: Any) -> float:
    """Mean palette CIEDE2000 of ``pipe``'s images for the brand's evaluation prompts x :data:`SAMPLE_SEEDS`."""
    import numpy as np

    from brandtune.config import load_brand
    from brandtune.evaluation.metrics import palette_adherence
    from brandtune.sampling import sample_images

    brand = load_brand("acme")
    prompts = [brand.fill(p) for p in brand.evaluation_prompts]
    images = sample_images(pipe, [p for p in prompts for _ in SAMPLE_SEEDS], [*SAMPLE_SEEDS] * len(prompts))
    return float(
        np.mean([palette_adherence(im, brand.palette, brand.neutral_palette).delta_e for im in images])
    )


def _train(out: Path, dataset: str, seed: int, decay: float | None, threads: int) -> Path:
    """The demo's fine-tune with ``seed`` and ``decay``; returns its adapter folder."""
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    cfg = TrainConfig(
        brand="acme",
        dataset=dataset,
        seed=seed,
        ema_decay=decay,
        checkpointing_steps=0,
        validation_inference_steps=2,
        num_threads=threads,
        output_dir=out / f"seed{seed}-ema{decay or 0}",
    )
    return train(cfg).adapter_dir


def _summary(name: str, values: list[float], base: float) -> str:
    ratios = [v / base for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    sd_r = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    return (
        f"| {name} | {statistics.mean(values):.3f} | {sd:.3f} | {max(values) - min(values):.3f} | "
        f"{statistics.mean(ratios):.3f} | {sd_r:.3f} | {', '.join(f'{r:.3f}' for r in ratios)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds.")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.99], help="EMA decays besides no EMA.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (training and sampling).")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, cpus={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}, torch {torch.__version__}",
        flush=True,
    )
    variants: list[float | None] = [None, *args.decays]
    with tempfile.TemporaryDirectory(prefix="bench-ema-") as tmp:
        dataset = _setup(Path(tmp))
        from brandtune.models import load_base_pipeline, resolve_base

        pipe = load_base_pipeline(resolve_base("builtin:tiny"))
        base = _palette_de(pipe)
        print(
            f"base model palette dE {base:.3f}\n| seed | EMA decay | palette dE | vs base | train s |",
            flush=True,
        )
        print("| ---: | ---: | ---: | ---: | ---: |", flush=True)
        scores: dict[float | None, list[float]] = {v: [] for v in variants}
        for seed in args.seeds:
            for decay in variants:
                t0 = time.perf_counter()
                adapter = _train(Path(tmp) / "runs", dataset, seed, decay, args.threads)
                elapsed = time.perf_counter() - t0
                pipe.load_lora_weights(str(adapter))
                try:
                    de = _palette_de(pipe)
                finally:
                    pipe.unload_lora_weights()
                scores[decay].append(de)
                print(
                    f"| {seed} | {decay or 'off'} | {de:.3f} | {de / base:.3f} | {elapsed:.0f} |", flush=True
                )
    print(f"\nacross training seeds {args.seeds} (base palette dE {base:.3f}):")
    print("| EMA decay | mean dE | sd dE | range dE | mean ratio | sd ratio | ratios by seed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for decay, values in scores.items():
        print(_summary(str(decay or "off"), values, base))


if __name__ == "__main__":
    main()
