"""Campaign generation speed: brandtune's campaign path from @champion against a plain diffusers loop.

    .venv/bin/python bench/campaign.py --arch tiny --threads 2                  # builtin:tiny, 64 px, on the CPU
    .venv/bin/python bench/campaign.py --arch flux --threads 2                  # builtin:tiny-flux, 64 px, CPU only
    python bench/campaign.py --arch sdxl --device cuda --json OUT/campaign-sdxl.json   # SDXL, 1024 px, bf16
    bench/gpu.sh OUTDIR                                                          # with the GPU train matrix

One process, in a temporary BRANDTUNE_HOME and brands folder: the sample brand ``acme`` (data/brands/acme) with one
standard campaign ``bench`` (``--variations`` x ``--settings``, default 10 x 3: beach, snow, studio; ``--steps``
denoising steps at ``--size`` px) is ingested, an adapter is trained for ``--train-steps`` steps with brandtune's
``train``, registered and promoted to ``@champion``. Then, one after the other, on ``--device``:

- **brandtune**: ``brandtune.campaigns.run_campaign("acme", "bench")``, the library's own path: @champion resolved
  and fetched, the pipeline loaded with the adapter fused (``GenerateConfig.fuse``), the images made in batches of
  ``--batch-size`` (default GenerateConfig's) through ``generate``/``sample_batch``, each PNG written and fsynced,
  the manifest, contact sheets, gallery and the campaign's MLflow run, on ``--device`` in ``run_campaign``'s
  ``device``/``dtype`` (bf16 on a GPU, fp32 on the CPU). ``sample_batch`` calls are timed ("generate s").
- **diffusers loop**: what a user without brandtune writes: the base's pipeline class ``from_pretrained`` (same
  folder, dtype and device), ``load_lora_weights`` of the registered adapter's file (unfused), the scheduler
  brandtune used (DDIM for the UNet families, the pipeline's own for FLUX), then one ``pipe(prompt,
  generator=torch.Generator("cpu").manual_seed(seed), ...)`` call per image, with the prompts, seeds, steps,
  guidance and size read from brandtune's ``manifest.json``. Nothing is written.

"s/image" is generate s over images (pipeline calls only; the first call of each variant carries its warm-up: the
process has already trained on the device, so CUDA is initialised for both); "end-to-end s" adds loading and, for
brandtune, writing. "ratio" is the diffusers loop's s/image over the row's (above 1: faster than the loop).
"mean |diff|" is the mean absolute difference of each image from brandtune's, on 0-255: fused vs unfused weights
and batched vs single calls round differently, so it is small, not 0; a large one means the two did not make the
same images.

Architectures: ``tiny`` (builtin:tiny), ``tiny-sdxl`` (builtin:tiny-sdxl), ``flux`` (builtin:tiny-flux): CPU-sized
built-ins. ``sdxl``: the SDXL 1.0 architecture (UNet, VAE, both CLIP encoders) from its published configs with
random weights (bench/train.py's ``build_arch``), UNet in bf16 on disk, trained at ``--train-resolution`` (512 by
default: the adapter does not depend on it) and generated at 1024 px in bf16. FLUX.1 at 1024 px is not built: its
transformer (11.9B) and T5-XXL (4.7B) are ~34 GB in bf16 on disk, written, hashed and read back twice (training,
then each variant), and a FLUX.1-dev image at 1024 px and 28 steps takes ~10 s on an H100, so 2 x 30 images alone
are ~10 minutes: more than a whole device session (15 minutes, 10 a command). ``--arch flux`` is therefore the tiny
built-in, on the CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BRAND = "acme"
CAMPAIGN = "bench"
#: --arch -> (base reference or "build", default image size, default training resolution)
ARCHS: dict[str, tuple[str, int, int]] = {
    "tiny": ("builtin:tiny", 64, 64),
    "tiny-sdxl": ("builtin:tiny-sdxl", 64, 64),
    "flux": ("builtin:tiny-flux", 64, 64),
    "sdxl": ("build", 1024, 512),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--variations", type=int, default=10, help="Images per setting (seeds 0..N-1)")
    p.add_argument("--settings", default="beach,snow,studio", help="Comma-separated keys of acme's settings")
    p.add_argument("--steps", type=int, default=20, help="Denoising steps per image")
    p.add_argument("--size", type=int, default=None, help="Image side in px (default: 64 tiny, 1024 sdxl)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="brandtune's images per call (GenerateConfig's)"
    )
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--train-resolution", type=int, default=None, help="Default 64 tiny, 512 sdxl")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and OMP_*)")
    p.add_argument("--json", type=Path, default=None, help="Also write the numbers here")
    args = p.parse_args(argv)
    if args.arch == "sdxl" and args.device != "cuda":
        p.error("--arch sdxl builds the 2.6B SDXL UNet: use --device cuda (or --arch tiny-sdxl on the CPU)")
    if args.arch == "flux" and args.device != "cpu":
        p.error("--arch flux is builtin:tiny-flux, CPU only: FLUX.1 at 1024 px does not fit a device session")
    _, size, train_px = ARCHS[args.arch]
    args.size = args.size or size
    args.train_resolution = args.train_resolution or train_px
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    return args


def make_home(tmp: Path, args: argparse.Namespace) -> None:
    """A fresh BRANDTUNE_HOME, MLflow store and brands folder whose ``acme`` has the ``bench`` campaign."""
    import yaml

    brands = tmp / "brands"
    shutil.copytree(REPO / "data" / "brands" / BRAND, brands / BRAND)
    spec_file = brands / BRAND / "brand.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["campaigns"] = [{"name": CAMPAIGN, "prompt": "a photo of {trigger} {subject}",
                          "settings": args.settings.split(","), "variations": args.variations,
                          "sampler": {"num_inference_steps": args.steps, "width": args.size,
                                      "height": args.size}}]  # fmt: skip
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    os.environ.update({"BRANDTUNE_HOME": str(tmp / "home"), "BRANDTUNE_BRANDS_DIR": str(brands),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                       "MLFLOW_DISABLE_TELEMETRY": "true"})  # fmt: skip


def base_model(args: argparse.Namespace, tmp: Path) -> str:
    ref = ARCHS[args.arch][0]
    if ref != "build":
        return ref
    sys.path.insert(0, str(REPO / "bench"))
    from train import build_arch  # bench/train.py: the published SDXL configs, random weights

    return str(build_arch(args.arch, tmp / "bench-models" / f"{args.arch}-bf16", "bf16", args.device))


def champion(args: argparse.Namespace, base: str) -> tuple[str, float]:
    """Ingest, train ``--train-steps`` steps, register and promote: the @champion version and the seconds taken."""
    from brandtune.config import load_brand
    from brandtune.ingest import ingest
    from brandtune.registry import promote, register
    from brandtune.training import TrainConfig
    from brandtune.training.run import train

    started = time.perf_counter()
    brand = load_brand(BRAND)
    ingest(brand, Path(os.environ["BRANDTUNE_BRANDS_DIR"]) / BRAND / "photos", progress=False)
    result = train(
        TrainConfig(
            brand=BRAND,
            base_model=base,
            max_train_steps=args.train_steps,
            train_batch_size=1,
            resolution=args.train_resolution,
            checkpointing_steps=0,
            validation_inference_steps=2,
            validation_prompts=["a photo of acme bottle"],
            learning_rate=1e-3,
            num_threads=args.threads,
            mixed_precision="bf16" if args.device == "cuda" else "no",
        )
    )
    version = register(BRAND, result.mlflow_run_id).version
    promote(BRAND, version, reason="bench")
    return version, time.perf_counter() - started


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def run_brandtune(args: argparse.Namespace) -> dict[str, Any]:
    """``run_campaign`` from @champion on ``--device``; its ``sample_batch`` calls timed."""
    import brandtune.generation as generation
    from brandtune.campaigns import run_campaign

    calls: list[float] = []
    inner_sample = generation.sample_batch

    def timed_sample(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner_sample(*a, **kw)
        finally:
            _sync(args.device)
            calls.append(time.perf_counter() - started)

    generation.sample_batch = timed_sample
    try:
        started = time.perf_counter()
        run = run_campaign(
            BRAND, CAMPAIGN, reason="bench", batch_size=args.batch_size, device=args.device, dtype=args.dtype
        )
        total = time.perf_counter() - started
    finally:
        generation.sample_batch = inner_sample
    _free(args.device)
    manifest = json.loads(run.manifest.read_text())
    return {"images": run.generated, "calls": len(calls), "batch": manifest["job"]["batch_size"],
            "generate_s": sum(calls), "end_to_end_s": total, "load_s": float("nan"),
            "output_dir": str(run.output_dir), "version": run.version}  # fmt: skip


def run_diffusers(args: argparse.Namespace, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The plain loop over the manifest's images: base pipeline, ``load_lora_weights`` unfused, one call each."""
    import diffusers
    import torch

    from brandtune.registry import WEIGHTS_NAME, fetch, model_uri, resolve_adapter_base
    from brandtune.sampling import call_kwargs
    from brandtune.settings import Settings

    started = time.perf_counter()
    adapter = fetch(model_uri(BRAND, "champion"))
    resolved = resolve_adapter_base(adapter, None, Settings.from_env())
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if resolved.family in {"sd1", "sd2"}
        else {}
    )
    cls = getattr(diffusers, resolved.pipeline_class)
    pipe = cls.from_pretrained(resolved.path, dtype=getattr(torch, args.dtype), **extra).to(args.device)
    pipe.load_lora_weights(str(adapter.path), weight_name=WEIGHTS_NAME)
    pipe.set_progress_bar_config(disable=True)
    sampler = manifest["sampler"]
    if sampler["scheduler"] == "ddim":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    elif sampler["scheduler"] != "default":
        raise SystemExit(f"the bench's diffusers loop knows ddim and default, not {sampler['scheduler']!r}")
    kwargs = call_kwargs(pipe)  # FLUX: the T5 length training used, as brandtune samples with
    if adapter.provenance.get("max_sequence_length") and "max_sequence_length" in kwargs:
        kwargs["max_sequence_length"] = int(adapter.provenance["max_sequence_length"])
    load_s = time.perf_counter() - started
    images, calls = [], []
    for entry in manifest["images"]:
        t0 = time.perf_counter()
        out = pipe(prompt=entry["prompt"], generator=torch.Generator("cpu").manual_seed(entry["seed"]),
                   num_inference_steps=sampler["num_inference_steps"], guidance_scale=sampler["guidance_scale"],
                   width=entry.get("width") or sampler["width"], height=entry.get("height") or sampler["height"],
                   **kwargs)  # fmt: skip
        _sync(args.device)
        calls.append(time.perf_counter() - t0)
        images.append(out.images[0])
    del pipe
    _free(args.device)
    row = {"images": len(images), "calls": len(calls), "batch": 1, "generate_s": sum(calls), "load_s": load_s,
           "end_to_end_s": time.perf_counter() - started}  # fmt: skip
    return row, images


def mean_abs_diff(folder: Path, manifest: dict[str, Any], images: list[Any]) -> float:
    """Mean absolute pixel difference (0-255) of ``images`` from the manifest's PNGs, in order."""
    import numpy as np
    from PIL import Image

    diffs = []
    for entry, image in zip(manifest["images"], images, strict=True):
        with Image.open(folder / entry["file"]) as saved:
            a = np.asarray(saved.convert("RGB"), dtype=np.float32)
        diffs.append(float(np.abs(a - np.asarray(image.convert("RGB"), dtype=np.float32)).mean()))
    return sum(diffs) / len(diffs)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def print_table(args: argparse.Namespace, rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"\ndate: {meta['date']}; machine: {meta['machine']}; device: {meta['device']}; "
          f"torch {meta['torch']}, diffusers {meta['diffusers']}; torch threads {meta['threads']}; "
          f"load average at end: {meta['load_average']:.1f}")  # fmt: skip
    print(f"campaign: {args.arch} ({meta['base']}), {args.variations} variations x {len(args.settings.split(','))} "
          f"settings, {args.steps} steps, {args.size} px, {args.dtype}, @champion v{meta['version']} "
          f"(trained {args.train_steps} steps at {args.train_resolution} px; set-up {meta['setup_s']:.0f} s)\n")  # fmt: skip
    print(
        "| variant | images | batch | load s | generate s | s/image | end-to-end s | ratio | mean abs diff |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    plain = rows["diffusers loop"]["s_per_image"]
    for name, r in rows.items():
        load = "-" if r["load_s"] != r["load_s"] else f"{r['load_s']:.1f}"
        diff = f"{r['mean_abs_diff']:.2f}" if "mean_abs_diff" in r else "-"
        cells = [name, str(r["images"]), str(r["batch"]), load, f"{r['generate_s']:.2f}", f"{r['s_per_image']:.4f}",
                 f"{r['end_to_end_s']:.1f}", f"{plain / r['s_per_image']:.2f}x", diff]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from train import cpu_name

    cpu = cpu_name()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "machine": f"{platform.machine()}, {cpu}, "
            f"os.cpu_count()={os.cpu_count()}", "device": device, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update({v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp_name:
        tmp = Path(tmp_name)
        make_home(tmp, args)
        t0 = time.perf_counter()
        base = base_model(args, tmp)
        version, _ = champion(args, base)
        setup_s = time.perf_counter() - t0
        print(f"@champion v{version} on {base}: set-up {setup_s:.0f} s; generating ...", flush=True)
        bt = run_brandtune(args)
        print(f"brandtune run_campaign: {bt['images']} images in {bt['calls']} calls, generate {bt['generate_s']:.2f} s "
              f"({bt['generate_s'] / bt['images']:.4f} s/image), end-to-end {bt['end_to_end_s']:.1f} s; "
              "diffusers loop ...", flush=True)  # fmt: skip
        rows = {"brandtune run_campaign (fused, batched)": bt}
        folder = Path(bt.pop("output_dir"))
        manifest = json.loads((folder / "manifest.json").read_text())
        plain, images = run_diffusers(args, manifest)
        plain["mean_abs_diff"] = mean_abs_diff(folder, manifest, images)
        rows["diffusers loop"] = plain
        for r in rows.values():
            r["s_per_image"] = r["generate_s"] / r["images"]
        meta = {**_meta(args), "base": ARCHS[args.arch][0], "version": version, "setup_s": setup_s}
        print_table(args, rows, meta)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "meta": meta,
                                             "results": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
