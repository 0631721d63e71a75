"""CPU bf16 autocast against fp32 on the demo's fine-tune: training speed and the demo acceptance test's palette
numbers (tests/models/test_builtin_quality.py, whose own functions score the images), per training seed.

    .venv/bin/python bench/cpu_bf16.py --seeds 0 --threads 1

Each seed trains the demo's LoRA (builtin:tiny's recommended settings, 300 steps) twice in this process, once with
``cpu_bf16`` off and once on, and draws the test's prompts and seeds with the base and each adapter. Printed per
seed and mode: the loop's wall time, the palette CIEDE2000 ratio adapter/base on the evaluation prompts and on the
unseen settings (the test wants <= 0.70), and the settings check. On a CPU without native bf16 the "bf16" run is
fp32 again (brandtune detects it), and the script says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _quality_module() -> Any:
    """tests/models/test_builtin_quality.py, loaded by path (its scoring functions and constants)."""
    path = REPO_ROOT / "tests" / "models" / "test_builtin_quality.py"
    spec = importlib.util.spec_from_file_location("builtin_quality", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="Training seeds, comma-separated (the test uses 0,1,2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="brandtune-bench-bf16-"))
    os.environ.setdefault("BRANDTUNE_HOME", str(home))
    os.environ.setdefault("BRANDTUNE_BRANDS_DIR", str(REPO_ROOT / "data" / "brands"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    torch.set_num_threads(args.threads)
    from brandtune.config import load_brand
    from brandtune.ingest import ingest
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.training import loop
    from brandtune.training.plan import cpu_bf16_native
    from brandtune.training.run import train

    q = _quality_module()
    brand_dir = REPO_ROOT / "data" / "brands" / "acme"
    dataset = ingest(load_brand(brand_dir), brand_dir / "photos", progress=False).path
    brand = load_brand("acme")
    prompts = {s: q._setting_prompt(brand, s) for s in dict.fromkeys(q.EVAL_SETTINGS + q.UNSEEN_SETTINGS)}
    pipe = load_base_pipeline(resolve_base("builtin:tiny"))
    before = q._draw(pipe, prompts)
    loop_s: dict[str, float] = {}
    inner = loop.run_loop

    def timed(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            loop_s["last"] = time.perf_counter() - started

    import brandtune.training.run as run

    run.run_loop = timed
    print(
        f"CPU bf16 native: {cpu_bf16_native()}; torch threads {args.threads}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| seed | mode | loop s | palette ratio, evaluation prompts | palette ratio, unseen settings | settings |"
    )
    print("| ---: | --- | ---: | ---: | ---: | --- |")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode, on in (("fp32", False), ("bf16", True)):
            out = home / f"seed{seed}-{mode}"
            result = train(q._demo_train_config(out, dataset=dataset.name, seed=seed, cpu_bf16=on))
            pipe.load_lora_weights(str(result.adapter_dir))
            try:
                after = q._draw(pipe, prompts)
            finally:
                pipe.unload_lora_weights()
            ratios = [
                q._palette_de(brand, after, settings) / q._palette_de(brand, before, settings)
                for settings in (q.EVAL_SETTINGS, q.UNSEEN_SETTINGS)
            ]
            _, _, line = q.setting_check(before, after)
            print(
                f"| {seed} | {mode} | {loop_s['last']:.1f} | {ratios[0]:.2f} | {ratios[1]:.2f} | {line} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
