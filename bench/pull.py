"""Downstream loading benchmark: cold vs warm ``brandtune.load_pipeline``, and switching adapters on one base.

    .venv/bin/python bench/pull.py              # 2 threads, 5 repeats
    .venv/bin/python bench/pull.py --threads 4 --repeats 9

Sets up a fresh ``BRANDTUNE_HOME`` (sqlite store) in a temp dir, ingests the sample brand, trains two short
adapters (3 steps, different seeds) and registers them as ``acme-lora`` v1 and v2. Then, on ``builtin:tiny``:

- cold load: the version's cache folder is deleted first (download + hash check + base + adapter);
- warm load: the version is cached (alias resolution + hash check + base + adapter, no download);
- switching between the two adapters on one loaded pipeline, three ways (``set_adapters`` with both loaded,
  ``unload_lora_weights`` + ``load_lora_weights``, ``load_lora_weights(hotswap=True)``), next to loading a fresh
  pipeline (warm) for each switch.

Prints the median and min of ``--repeats`` runs. Timings on a shared machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> list[float]:
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def setup(home: Path) -> tuple[str, str]:
    from brandtune.config import load_brand
    from brandtune.ingest import ingest
    from brandtune.registry import register
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    brand = load_brand(REPO_ROOT / "data" / "brands" / "acme")
    ingest(brand, REPO_ROOT / "data" / "brands" / "acme" / "photos", progress=False)
    versions = []
    for seed in (0, 1):
        cfg = TrainConfig(
            brand="acme", max_train_steps=3, checkpointing_steps=0, validation_inference_steps=1, seed=seed,
            learning_rate=1e-2, lr_warmup_steps=0, output_dir=home / f"run{seed}",
        )  # fmt: skip
        result = train(cfg)
        versions.append(register("acme", result.mlflow_run_id).version)
    return versions[0], versions[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (default 5)")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    home = Path(tempfile.mkdtemp(prefix="brandtune-bench-pull-"))
    os.environ.update(
        BRANDTUNE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", HF_HUB_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    os.environ.pop("MLFLOW_RUN_ID", None)
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        rows = run(home, args.repeats, args.threads)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(f"model: builtin:tiny (64 px SD 1.x), LoRA rank 8 on to_q/k/v/out.0, {args.repeats} repeats\n")
    print("| operation | median s | min s |")
    print("| --- | ---: | ---: |")
    for name, times in rows:
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} |")


def run(home: Path, repeats: int, threads: int) -> list[tuple[str, list[float]]]:
    import torch

    import brandtune
    from brandtune.registry import adapter_cache_dir, adapter_name, fetch
    from brandtune.settings import Settings

    torch.set_num_threads(threads)
    v1, v2 = setup(home)
    torch.set_num_threads(threads)  # training sets its own thread count
    uri1, uri2 = f"models:/acme-lora/{v1}", f"models:/acme-lora/{v2}"
    cache = adapter_cache_dir("acme-lora", v1, Settings.from_env())
    brandtune.load_pipeline(uri1)  # warm the builtin base build and imports once

    rows = [
        ("load_pipeline cold (download + verify + base + adapter)",
         timed(lambda: brandtune.load_pipeline(uri1), repeats, lambda: shutil.rmtree(cache, ignore_errors=True))),
        ("load_pipeline warm (cached version)", timed(lambda: brandtune.load_pipeline(uri1), repeats)),
        ("  of which: resolve alias + verify cached adapter",
         timed(lambda: fetch("models:/acme-lora@candidate"), repeats)),
    ]  # fmt: skip

    a1, a2 = fetch(uri1), fetch(uri2)
    both = brandtune.load_pipeline(uri1)
    both.load_lora_weights(str(a2.path), adapter_name=adapter_name(a2.version))
    names = [adapter_name(a1.version), adapter_name(a2.version)]
    state = {"i": 0}

    def flip_set_adapters() -> None:
        state["i"] ^= 1
        both.set_adapters(names[state["i"]])

    one = brandtune.load_pipeline(uri1)

    def flip_reload() -> None:
        state["i"] ^= 1
        one.unload_lora_weights()
        adapter = (a1, a2)[state["i"]]
        one.load_lora_weights(str(adapter.path), adapter_name=adapter_name(adapter.version))

    hot = brandtune.load_pipeline(uri1)
    hot_name = hot.get_active_adapters()[0]

    def flip_hotswap() -> None:
        state["i"] ^= 1
        hot.load_lora_weights(str((a1, a2)[state["i"]].path), adapter_name=hot_name, hotswap=True)

    def fresh() -> None:
        state["i"] ^= 1
        brandtune.load_pipeline((uri1, uri2)[state["i"]])

    rows += [
        ("switch adapter: set_adapters (both loaded)", timed(flip_set_adapters, repeats)),
        ("switch adapter: unload_lora_weights + load_lora_weights", timed(flip_reload, repeats)),
        ("switch adapter: load_lora_weights(hotswap=True)", timed(flip_hotswap, repeats)),
        ("switch adapter: fresh load_pipeline (warm cache)", timed(fresh, repeats)),
    ]
    return rows


if __name__ == "__main__":
    main()
