"""Training benchmark: brandtune's LoRA training vs a loop shaped like diffusers' ``train_dreambooth_lora.py``.

    .venv/bin/python bench/train.py                     # builtin:tiny, 64 px, batch 4, rank 8, 200 steps, 2 threads
    .venv/bin/python bench/train.py --steps 200 --batch-size 4 --resolution 64 --rank 8 --threads 2 --base builtin:tiny
    # GPU, UNets of the real architectures built from config with random weights (only the UNet loop matters):
    .venv/bin/python bench/train.py --arch sd15 --device cuda --mixed-precision bf16 --resolution 512 --batch-size 1
    bench/train_gpu.sh OUTDIR                            # the whole GPU matrix (SD 1.5 and SDXL, 512/1024 px, batch 1/4)

Two variants, each in a fresh child process of this script (``--only reference|brandtune``) so that peak RSS is per
variant; the parent prints the table.

- **reference**: the shape of the diffusers DreamBooth LoRA example: a ``torch.utils.data.DataLoader`` over the
  dataset's images that opens, resizes, centre-crops and normalises every image every step (``num_workers=0``, the
  script's default), ``vae.encode(...).latent_dist.sample()`` and a text-encoder forward every step, the UNet with a
  peft LoRA (same targets, rank, alpha and gaussian init as brandtune), torch AdamW, the same learning rate, the same
  DDPM noise scheduler, under an ``accelerate.Accelerator``; the LoRA is saved at the end.
- **brandtune**: the real ``brandtune.training.run.train(TrainConfig(...))``, with its defaults (checkpoint every 50
  steps, MLflow run on sqlite, validation images at the end). Its ``_setup_models``, ``_encode`` and ``run_loop``
  are wrapped with timers, nothing else is changed. The latent/text cache starts cold.

"loop steps/s" is steps over the wall time of the training loop only (model loading, encoding and saving left out);
"end-to-end" runs from the child's first line (before ``import torch``) to its exit, so it carries imports, model
loading, brandtune's one-off encode and MLflow set-up, and the reference's save. Peak RSS is the child's
``ru_maxrss``; "loop RSS +" is how far RSS rose during the loop above its value at the loop's start (sampled every
20 ms). On a GPU, peak memory is ``torch.cuda.max_memory_allocated``, for the loop alone and for the whole run.
Exits non-zero only when something fails.
"""

from __future__ import annotations

import time

_T_PROCESS = time.perf_counter()  # before any heavy import: end-to-end time starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
VARIANTS = ("reference", "brandtune")
BENCH_LR = (
    1e-3  # both loops, constant: the diffusers script's kind of run (attention LoRA), not a base's recipe
)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# ------------------------------------------------------------------------------- architectures built from config

_SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "steps_offset": 1}  # fmt: skip
# The published SD VAE (83.7M parameters; 8x downsampling to 4 latent channels) and CLIP text encoders (ViT-L/14's
# 123M and, for SDXL, OpenCLIP ViT-bigG/14's 695M), so the reference's per-step VAE and text work has its real cost.
_SD_VAE = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "latent_channels": 4, "sample_size": 512}  # fmt: skip
_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
_CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
           "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    # SD 1.5's published UNet config (runwayml/stable-diffusion-v1-5, unet/config.json); 860M parameters.
    "sd15": {
        "family": "sd1",
        "unet": {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": _SD_VAE,
        "text_encoder": _CLIP_L,
        "scheduler": {"_class_name": "DDPMScheduler", **_SD_BETAS, "clip_sample": False},
    },
    # SDXL 1.0 base's published UNet config (stabilityai/stable-diffusion-xl-base-1.0); 2.6B parameters.
    "sdxl": {
        "family": "sdxl",
        "unet": {
            "sample_size": 128,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [5, 10, 20],
            "transformer_layers_per_block": [1, 2, 10],
            "use_linear_projection": True,
            "cross_attention_dim": 2048,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        "text_encoder": _CLIP_L,
        "text_encoder_2": _CLIP_G,
        "scheduler": {"_class_name": "EulerDiscreteScheduler", **_SD_BETAS, "timestep_spacing": "leading"},
    },
}


def build_arch(arch: str, dest: Path, dtype_name: str, device: str) -> Path:
    """A diffusers folder with ``arch``'s UNet, VAE and text encoders (random weights), made once on ``device``."""
    if (dest / ".complete").is_file():
        return dest
    import torch

    from brandtune.models.builtin import BuiltinSpec, _make_sd, _make_sdxl
    from brandtune.models.tokenizer import write_clip_tokenizer_files

    cfg = ARCH_CONFIGS[arch]
    spec = BuiltinSpec(
        f"bench:{arch}", arch, cfg["family"], {k: v for k, v in cfg.items() if k != "family"}, ""
    )
    started = time.perf_counter()
    # on the GPU, initialising SDXL's 2.6B parameters takes seconds instead of a minute
    with torch.random.fork_rng(devices=[]), torch.device(device):
        pipe = _make_sdxl(spec) if cfg["family"] == "sdxl" else _make_sd(spec)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    pipe.unet.to(dtype)  # random weights in the training dtype: half the disk and load time of fp32
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if (tmp / name).is_dir():
            write_clip_tokenizer_files(tmp / name)
    (tmp / ".complete").write_text("ok\n")
    os.replace(tmp, dest)
    n = sum(p.numel() for p in pipe.unet.parameters())
    print(
        f"built {arch} UNet ({n / 1e6:.0f}M parameters, {dtype_name}) in {time.perf_counter() - started:.0f} s"
    )
    return dest


# ---------------------------------------------------------------------------------------------- measuring


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds while armed; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.start = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _reset_gpu_peak(device: str, out: dict[str, Any]) -> None:
    """Start measuring the loop's own peak; the peak so far is kept in ``out`` for the whole-run figure."""
    if device == "cuda":
        import torch

        out["pre_loop_peak_gpu_mib"] = _gpu_peak_mib(device)
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_mib(device: str) -> float:
    if device != "cuda":
        return float("nan")
    import torch

    return torch.cuda.max_memory_allocated() / MIB


def _finish(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out["end_to_end_s"] = time.perf_counter() - _T_PROCESS
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    out["loop_steps_per_s"] = args.steps / out["loop_s"]
    out["images_per_s"] = args.steps * args.batch_size / out["loop_s"]
    times = sorted(out["step_times"])
    out["median_step_s"] = times[len(times) // 2] if times else float("nan")
    out["min_step_s"] = times[0] if times else float("nan")  # the least-disturbed step on a shared machine
    if args.device == "cuda":
        peaks = (out["pre_loop_peak_gpu_mib"], out["loop_peak_gpu_mib"], _gpu_peak_mib(args.device))
        out["peak_gpu_mib"] = max(peaks)
    return out


# ---------------------------------------------------------------------------------------------- reference


class CaptionedImages:
    """The dataset's images and captions; every access opens, resizes, crops and normalises the image."""

    def __init__(self, dataset_dir: Path, tokenizer: Any, resolution: int) -> None:
        rows = [json.loads(line) for line in (dataset_dir / "metadata.jsonl").read_text().splitlines()]
        self.items = [(dataset_dir / r["file_name"], r["text"]) for r in rows]
        self.tokenizer, self.resolution = tokenizer, resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import numpy as np
        import torch
        from PIL import Image

        path, caption = self.items[i]
        res = self.resolution
        with Image.open(
            path
        ) as img:  # transforms.Resize(res, BILINEAR) + CenterCrop(res) + ToTensor + Normalize
            img = img.convert("RGB")
            scale = res / min(img.size)
            img = img.resize((max(res, round(img.width * scale)), max(res, round(img.height * scale))),
                             Image.Resampling.BILINEAR)  # fmt: skip
            left, top = (img.width - res) // 2, (img.height - res) // 2
            img = img.crop((left, top, left + res, top + res))
            pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        ids = self.tokenizer(caption, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
        return {"pixel_values": (pixels - 0.5) / 0.5, "input_ids": ids[0]}


def _collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    }


def run_reference(args: argparse.Namespace, base: Path, dataset_dir: Path) -> dict[str, Any]:
    """The DreamBooth-LoRA-script-shaped loop; returns its timings."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    from brandtune.config import DEFAULT_UNET_TARGETS, TrainConfig

    defaults = TrainConfig(brand="acme")  # the same AdamW settings as brandtune's defaults
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False)
        model.to(accelerator.device, dtype=weight_dtype)
    lora = LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                      target_modules=list(DEFAULT_UNET_TARGETS))  # fmt: skip
    unet.add_adapter(lora)
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=BENCH_LR, betas=(defaults.adam_beta1, defaults.adam_beta2),
                                  weight_decay=defaults.weight_decay, eps=defaults.adam_epsilon)  # fmt: skip
    loader = torch.utils.data.DataLoader(CaptionedImages(dataset_dir, tokenizer, args.resolution),
                                         batch_size=args.batch_size, shuffle=True, collate_fn=_collate,
                                         num_workers=0)  # fmt: skip
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=args.steps)  # fmt: skip
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    out["setup_s"] = time.perf_counter() - t0
    step, loss_value = 0, float("nan")
    unet.train()
    _sync(args.device)
    _reset_gpu_peak(args.device, out)
    with RssSampler() as rss:
        t_loop = time.perf_counter()
        step_times: list[float] = []
        t_step = time.perf_counter()
        while step < args.steps:
            for batch in loader:  # the span brandtune's step_time_s covers: batch, step, loss read back
                with accelerator.accumulate(unet):
                    pixel_values = batch["pixel_values"].to(dtype=weight_dtype)
                    latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
                    noise = torch.randn_like(latents)
                    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps,
                                              (latents.shape[0],), device=latents.device).long()  # fmt: skip
                    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                    hidden = text_encoder(batch["input_ids"].to(accelerator.device))[0]
                    pred = unet(noisy, timesteps, hidden).sample
                    if noise_scheduler.config.prediction_type == "v_prediction":
                        target = noise_scheduler.get_velocity(latents, noise, timesteps)
                    else:
                        target = noise
                    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, defaults.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                loss_value = loss.detach().item()  # the script logs the loss every step
                now = time.perf_counter()
                step_times.append(now - t_step)
                t_step = now
                step += 1
                if step >= args.steps:
                    break
        _sync(args.device)
        out["loop_s"] = time.perf_counter() - t_loop
        out["loop_peak_gpu_mib"] = _gpu_peak_mib(args.device)
    out["loop_rss_rise_mib"] = (rss.peak - rss.start) / MIB
    out["step_times"] = step_times
    t_save = time.perf_counter()
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(accelerator.unwrap_model(unet)))
    StableDiffusionPipeline.save_lora_weights(Path(args.workdir) / "reference-lora", unet_lora_layers=layers)
    out["save_s"] = time.perf_counter() - t_save
    out["final_loss"] = loss_value
    accelerator.end_training()
    return _finish(out, args)


# ---------------------------------------------------------------------------------------------- brandtune


def _timed(
    module: Any, name: str, out: dict[str, Any], key: str, rss: dict[str, RssSampler] | None = None
) -> None:
    """Wrap ``module.name`` so each call adds its wall time to ``out[key]`` (and samples RSS if asked)."""
    inner = getattr(module, name)
    device = out["_device"]

    def wrapper(*a: Any, **kw: Any) -> Any:
        _sync(device)
        started = time.perf_counter()
        sampler = RssSampler() if rss is not None else None
        if sampler is not None:
            _reset_gpu_peak(device, out)
        try:
            if sampler is None:
                return inner(*a, **kw)
            with sampler:
                return inner(*a, **kw)
        finally:
            _sync(device)
            out[key] = out.get(key, 0.0) + time.perf_counter() - started
            if sampler is not None and rss is not None:
                rss[key] = sampler
                out["loop_peak_gpu_mib"] = _gpu_peak_mib(device)

    setattr(module, name, wrapper)


def _mlflow_step_times(run_id: str | None) -> list[float]:
    """brandtune's own per-step times (batch to reduced loss; no logging or checkpoint), from its MLflow run."""
    from mlflow import MlflowClient

    from brandtune.settings import Settings

    client = MlflowClient(Settings.from_env().tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, "step_time_s"), key=lambda m: m.step)]


def run_brandtune(args: argparse.Namespace, base: str, dataset_dir: Path) -> dict[str, Any]:
    """``brandtune.training.run.train`` with timers around its phases; returns the timings."""
    from brandtune.config import DEFAULT_UNET_TARGETS, TrainConfig
    from brandtune.training import run

    out: dict[str, Any] = {"_device": args.device}
    samplers: dict[str, RssSampler] = {}
    _timed(run, "_setup_models", out, "setup_s")
    _timed(run, "_encode", out, "encode_s")
    _timed(run, "run_loop", out, "loop_s", samplers)
    _timed(run, "_start_tracking", out, "mlflow_start_s")
    _timed(run, "_finish", out, "finish_s")  # save adapter + validation images + MLflow artifacts
    config = TrainConfig(
        brand="acme",
        dataset=dataset_dir.name,
        base_model=base,
        output_dir=Path(args.workdir) / "brandtune-run",
        max_train_steps=args.steps,
        train_batch_size=args.batch_size,
        resolution=args.resolution,
        rank=args.rank,
        num_threads=args.threads,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        # the reference's LoRA and schedule, not the base's recommendation: the two loops must do the same work
        learning_rate=BENCH_LR,
        target_modules=list(DEFAULT_UNET_TARGETS),
        lr_scheduler="constant",
        lr_warmup_steps=0,
    )
    if args.arch:  # only the UNet loop matters here: one short validation image instead of 4 x 20 steps
        config = config.model_copy(update={"validation_prompts": ["a photo of acme bottle"],
                                           "validation_inference_steps": 2})  # fmt: skip
    t0 = time.perf_counter()
    result = run.train(config)
    out["train_call_s"] = time.perf_counter() - t0
    out["final_loss"] = result.final_loss
    out["cache_hit"] = result.cache_hit
    out["loop_rss_rise_mib"] = (samplers["loop_s"].peak - samplers["loop_s"].start) / MIB
    out["step_times"] = _mlflow_step_times(result.mlflow_run_id)
    del out["_device"]
    return _finish(out, args)


# ---------------------------------------------------------------------------------------------- parent


def _child_args(args: argparse.Namespace, variant: str, result: Path) -> list[str]:
    flags = ["--steps", args.steps, "--batch-size", args.batch_size, "--resolution", args.resolution,
             "--rank", args.rank, "--threads", args.threads, "--base", args.base, "--seed", args.seed,
             "--device", args.device, "--mixed-precision", args.mixed_precision, "--workdir", args.workdir,
             "--only", variant, "--result", result]  # fmt: skip
    if args.arch:
        flags += ["--arch", args.arch]
    if args.flush_denormal:
        flags.append("--flush-denormal")
    return [sys.executable, str(Path(__file__).resolve()), *map(str, flags)]


def prepare(args: argparse.Namespace) -> tuple[str, Path]:
    """Ingest the sample brand and resolve (or build) the base; returns the base ref and the dataset folder."""
    from brandtune.config import load_brand
    from brandtune.errors import IngestError
    from brandtune.ingest import find_dataset, ingest
    from brandtune.models import resolve_base

    brand_dir = REPO_ROOT / "data" / "brands" / "acme"
    try:
        dataset_dir = find_dataset("acme")
    except IngestError:  # not ingested yet in this home
        dataset_dir = ingest(load_brand(brand_dir), brand_dir / "photos", progress=False).path
    base = args.base
    if args.arch:
        folder = Path(os.environ["BRANDTUNE_HOME"]) / "bench-models" / f"{args.arch}-{args.mixed_precision}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        base = str(build_arch(args.arch, folder, args.mixed_precision, args.device))
    resolve_base(base)  # builds builtin:tiny once here, so neither child pays for it
    return base, dataset_dir


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [
            ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{platform.system()} {platform.machine()}, {cpu}, os.cpu_count()={os.cpu_count()}"


def print_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    import torch

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {_machine()}; GPU: {gpu}; load average at end: {os.getloadavg()[0]:.1f}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads {args.threads} "
          f"(set with torch.set_num_threads; {', '.join(f'{v}={os.environ.get(v)}' for v in THREAD_VARS)})")  # fmt: skip
    print(f"base {args.arch or args.base}, {args.resolution} px, batch {args.batch_size}, rank {args.rank}, "
          f"{args.steps} steps, mixed precision {args.mixed_precision}, device {args.device}, "
          f"flush denormals {args.flush_denormal}\n")  # fmt: skip
    cols = ["variant", "loop steps/s", "images/s", "median step s", "min step s", "loop s", "setup s", "encode s",
            "MLflow start s", "save+validation s", "end-to-end s", "peak RSS MiB", "loop RSS + MiB",
            "final loss"]  # fmt: skip
    if args.device == "cuda":
        cols[-1:-1] = ["loop peak GPU MiB", "peak GPU MiB"]
    print("| " + " | ".join(cols) + " |")
    print("| --- " + "| ---: " * (len(cols) - 1) + "|")
    for name, r in results.items():
        row = [name, f"{r['loop_steps_per_s']:.2f}", f"{r['images_per_s']:.1f}",
               f"{r['median_step_s']:.3f}", f"{r['min_step_s']:.3f}",
               f"{r['loop_s']:.1f}", f"{r['setup_s']:.1f}", f"{r.get('encode_s', 0.0):.2f}",
               f"{r.get('mlflow_start_s', 0.0):.1f}", f"{r.get('finish_s', r.get('save_s', 0.0)):.1f}",
               f"{r['end_to_end_s']:.1f}",
               f"{r['peak_rss_mib']:.0f}", f"{r['loop_rss_rise_mib']:.1f}"]  # fmt: skip
        if args.device == "cuda":
            row += [f"{r['loop_peak_gpu_mib']:.0f}", f"{r['peak_gpu_mib']:.0f}"]
        row.append(f"{r['final_loss']:.4f}")
        print("| " + " | ".join(row) + " |")
    if set(VARIANTS) <= results.keys():
        ref, bt = results["reference"], results["brandtune"]
        print(f"\nbrandtune / reference: loop steps/s {bt['loop_steps_per_s'] / ref['loop_steps_per_s']:.2f}x, "
              f"median step {ref['median_step_s'] / bt['median_step_s']:.2f}x faster, "
              f"min step {ref['min_step_s'] / bt['min_step_s']:.2f}x faster, "
              f"end-to-end time {ref['end_to_end_s'] / bt['end_to_end_s']:.2f}x faster, "
              f"peak RSS {bt['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child (and OMP_*)")
    p.add_argument("--base", default="builtin:tiny")
    p.add_argument("--arch", choices=sorted(ARCH_CONFIGS), default=None,
                   help="Use a UNet of this architecture with random weights instead of --base")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument(
        "--variants", default=None, help="Comma-separated; default: both (brandtune only for sdxl)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) in both children (random tiny models hit denormals on CPU)")  # fmt: skip
    p.add_argument(
        "--home", type=Path, default=None, help="BRANDTUNE_HOME to use (default: a fresh temp dir)"
    )
    p.add_argument("--json", type=Path, default=None, help="Also write the results here")
    p.add_argument("--only", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    base, dataset_dir = args.base, None
    from brandtune.ingest import find_dataset

    dataset_dir = find_dataset("acme")
    if args.arch:
        base = str(
            Path(os.environ["BRANDTUNE_HOME"]) / "bench-models" / f"{args.arch}-{args.mixed_precision}"
        )
    if args.only == "reference":
        from brandtune.models import resolve_base

        result = run_reference(args, resolve_base(base).path, dataset_dir)
    else:
        result = run_brandtune(args, base, dataset_dir)
    args.result.write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        return child(args)
    home = args.home or Path(tempfile.mkdtemp(prefix="brandtune-bench-train-"))
    os.environ.update({"BRANDTUNE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true",
                       "BRANDTUNE_BRANDS_DIR": str(REPO_ROOT / "data" / "brands")})  # fmt: skip
    os.environ.update({v: str(args.threads) for v in THREAD_VARS})
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    args.workdir = str(home / "bench-work")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(args)
    print(f"BRANDTUNE_HOME={home}; dataset and base ready in {time.perf_counter() - t0:.1f} s", flush=True)
    default = ["brandtune"] if args.arch == "sdxl" else list(VARIANTS)
    variants = args.variants.split(",") if args.variants else default
    if args.arch == "sdxl" and "reference" in variants:
        raise SystemExit("the reference loop is SD 1.x-shaped; for --arch sdxl use --variants brandtune")
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        result_file = Path(args.workdir) / f"{variant}.json"
        print(f"running {variant} ...", flush=True)
        proc = subprocess.run(_child_args(args, variant, result_file), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
        if proc.returncode != 0:
            print(proc.stdout[-4000:])
            raise SystemExit(f"{variant} failed (exit {proc.returncode})")
        results[variant] = json.loads(result_file.read_text())
    print_table(args, results)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
