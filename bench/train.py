"""Training benchmark: brandtune's LoRA training vs a loop shaped like diffusers' ``train_dreambooth_lora.py``.

    .venv/bin/python bench/train.py                     # builtin:tiny, 64 px, batch 4, rank 4, 300 steps, 2 threads
    .venv/bin/python bench/train.py --steps 300 --batch-size 4 --resolution 64 --rank 4 --threads 2 --base builtin:tiny
    .venv/bin/python bench/train.py --variants reference,brandtune,brandtune-bf16,brandtune-masked --before DIR
    # GPU, UNets of the real architectures built from config with random weights (only the UNet loop matters):
    .venv/bin/python bench/train.py --arch sd15 --device cuda --mixed-precision bf16 --resolution 512 --batch-size 1
    bench/train_gpu.sh OUTDIR                            # the whole GPU matrix (SD 1.5 and SDXL, 512/1024 px, batch 1/4)
    # the flow-matching transformers: FLUX.1-dev / SD3.5-medium from config (GPU), or their tiny built-ins (CPU):
    .venv/bin/python bench/train.py --arch flux --device cuda --mixed-precision bf16 --resolution 1024 --gradient-checkpointing
    .venv/bin/python bench/train.py --arch sd3 --tiny --threads 1                # builtin:tiny-sd3, 64 px, on the CPU
    ROWS=flow bench/train_gpu.sh OUTDIR                  # FLUX.1-dev and SD3.5-medium, 512/1024 px, checkpointing off/on

Two variants, each in a fresh child process of this script (``--only reference|brandtune``) so that peak RSS is per
variant; the parent prints the table, and for builtin:tiny / ``--arch sd15|sdxl`` a phase table: each child's life
from its spawn to its exit, every moment in one phase (``bench/phases.py``: interpreter, imports wherever they
happen, plan, model load, encode/cache, tracking, loop, checkpoints, save, validation, other, exit), with the wall
from the spawn to the adapter on disk. More brandtune variants: ``EXTRA_VARIANTS`` (``--variants``, ``--before``).

- **reference**: the shape of the diffusers DreamBooth LoRA example: a ``torch.utils.data.DataLoader`` over the
  dataset's images that opens, resizes, centre-crops and normalises every image every step (``num_workers=0``, the
  script's default), ``vae.encode(...).latent_dist.sample()`` and a text-encoder forward every step, the UNet with a
  peft LoRA (same targets, rank, alpha and gaussian init as brandtune), torch AdamW, the same learning rate, the same
  DDPM noise scheduler, under an ``accelerate.Accelerator``; the LoRA is saved at the end.
- **brandtune**: the real ``brandtune.training.run.train(TrainConfig(...))``, with its defaults (checkpoint every 50
  steps, MLflow run on sqlite, validation images at the end) except masked_loss and cpu_bf16, off so that it does
  the reference's work in the reference's precision. Its phases are wrapped with timers, nothing else is changed.
  The latent/text cache starts cold; the MLflow store is created by the parent.

"loop steps/s" is steps over the wall time of the training loop only (model loading, encoding and saving left out);
"end-to-end" runs from the child's first line (before ``import torch``) to its exit, so it carries imports, model
loading, brandtune's one-off encode and MLflow set-up, and the reference's save. Peak RSS is the child's
``ru_maxrss``; "loop RSS +" is how far RSS rose during the loop above its value at the loop's start (sampled every
20 ms). On a GPU, peak memory is ``torch.cuda.max_memory_allocated``, for the loop alone and for the whole run.
Exits non-zero only when something fails.

``--arch flux|sd3`` times the training step alone, on the FLUX.1-dev or SD3.5-medium transformer built from its
published config with random weights in the training dtype, in each child (``--tiny``: the transformer of
builtin:tiny-flux / builtin:tiny-sd3, small enough for a CPU). There is no VAE or text encoder: both variants start
from the same random "cache" of latent distributions (16 channels at 1/8 of the image size) and prompt embeddings
of the real shapes (FLUX: T5 ``(B, 512, 4096)``, pooled CLIP ``(B, 768)``; SD3: ``(B, 77 + 256, 4096)``, pooled
``(B, 2048)``), the same transformer weights and LoRA init (same seed), rank 16 on brandtune's flow defaults
(``ATTENTION_TRANSFORMER_TARGETS``), learning rate 1e-4, the same timestep density (logit-normal) and loss weight.

- **reference**: the step of diffusers' ``train_dreambooth_lora_flux.py`` / ``train_dreambooth_lora_sd3.py`` with
  ``--cache_latents`` and the prompts encoded before the loop (:func:`run_flow_reference`).
- **brandtune**: brandtune's own ``run_loop`` (its ``optimizer_step``, ``diffusion_loss`` and ``FlowOps``) over a
  plan-like object, with the optimizer, LoRA, accelerator and set-up of ``brandtune.training.run``
  (:func:`run_flow_brandtune`).

"s/step" is the mean over the timed steps after ``--warmup-steps`` untimed ones (each step from its batch to the
loss read back, which waits for the GPU); on a GPU "loop peak GPU MiB" is ``torch.cuda.max_memory_allocated``
over the loop. A CUDA out-of-memory is reported as "OOM" in the table, not as a failure.
"""

from __future__ import annotations

import time

_T_PROCESS = time.perf_counter()  # before any heavy import: end-to-end time starts here
_T_WALL0 = time.time()  # the same moment on the wall clock, which the parent compares with its spawn time

import sys  # noqa: E402

if "--only" in sys.argv:  # a child: every moment from here on goes to a phase, imports to "imports"
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from phases import PhaseClock, install_import_timer

    CLOCK: PhaseClock | None = PhaseClock("other")
    CLOCK.marks["first_line"] = _T_WALL0
    install_import_timer(CLOCK)
else:
    CLOCK = None

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
VARIANTS = ("reference", "brandtune")
#: ``brandtune train`` run as a user runs it (the command, its launcher and training process), timed from outside.
CLI_VARIANT = "brandtune-cli"
#: brandtune's variants beside the headline (``--variants``), and what each changes in its TrainConfig. The headline
#: "brandtune" does the reference's work: masked_loss off (the default masked loss with background_target "base"
#: adds a no-grad denoiser forward per step, which the reference does not do) and cpu_bf16 off (fp32 in both).
EXTRA_VARIANTS: dict[str, dict[str, Any]] = {
    "brandtune-bf16": {"cpu_bf16": True},  # CPU bf16 autocast of the step (AMX-BF16 CPUs)
    "brandtune-masked": {"masked_loss": True},  # the demo's default loss: masks, base-model background target
    "brandtune-before": {},  # the headline's settings on the brandtune source tree that --before names
}
#: The rows of the phase table, in the order a run goes through them.
PHASE_ROWS = ("interpreter", "imports", "plan", "model load", "encode/cache", "tracking", "loop", "checkpoints",
              "save", "validation", "other", "exit")  # fmt: skip
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


# The flow-matching transformers, built from their published configs with random weights in the training dtype,
# in each child (no VAE or text encoders: latents and prompt embeddings are random tensors of the real shapes).
# FLUX.1-dev's transformer/config.json (black-forest-labs/FLUX.1-dev; axes_dims_rope is diffusers' default, which
# the file leaves out): 19 double-stream and 38 single-stream blocks, 24 heads x 128; 11.9B parameters.
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 2x2 packed patches of the 16-channel latents
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's hidden size
    "pooled_projection_dim": 768,  # CLIP-L's pooled output
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
# FLUX.1-dev's scheduler/scheduler_config.json: dynamic shifting, so training draws from the unshifted sigmas.
FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# stabilityai/stable-diffusion-3.5-medium's transformer/config.json (SD3Transformer2DModel; MMDiT-X: the first 13
# blocks also have a second, image-only attention): 24 layers, 24 heads x 64; 2.24B parameters here.
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,  # CLIP-L's and CLIP-G's text_embeds side by side
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
# stable-diffusion-3.5-medium's scheduler/scheduler_config.json.
SD35_MEDIUM_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
FLOW_ARCHS: dict[str, dict[str, Any]] = {
    "flux": {
        "family": "flux",
        "name": "FLUX.1-dev",
        "transformer": FLUX_DEV_TRANSFORMER,
        "scheduler": FLUX_DEV_SCHEDULER,
        # FLUX.1's VAE (vae/config.json): 16 latent channels at 1/8 of the image size
        "latent_channels": 16,
        "vae_factor": 8,
        "shift_factor": 0.1159,
        "scaling_factor": 0.3611,
        "text_tokens": 512,  # T5 tokens (FluxPipeline's max_sequence_length for dev)
        "text_dim": 4096,
        "pooled_dim": 768,
        "tiny": "builtin:tiny-flux",
    },
    "sd3": {
        "family": "sd3",
        "name": "SD3.5-medium",
        "transformer": SD35_MEDIUM_TRANSFORMER,
        "scheduler": SD35_MEDIUM_SCHEDULER,
        # SD3's VAE (vae/config.json)
        "latent_channels": 16,
        "vae_factor": 8,
        "shift_factor": 0.0609,
        "scaling_factor": 1.5305,
        "text_tokens": 77 + 256,  # CLIP-L+G's 77 tokens (padded to 4096) then 256 T5 tokens
        "text_dim": 4096,
        "pooled_dim": 2048,
        "tiny": "builtin:tiny-sd3",
    },
}
FLOW_EXAMPLES = 8  # examples in the random "dataset": batches cycle over them
#: The SD3 script's ``--precondition_outputs`` (default 1: EDM preconditioning, target x0). 0 trains what brandtune
#: trains (target eps - x0), so both loops minimise the same loss; the difference is one multiply-add.
SD3_PRECONDITION_OUTPUTS = False


def flow_arch(arch: str, tiny: bool) -> dict[str, Any]:
    """``arch``'s transformer, scheduler and data shapes; ``tiny``: the same read from its built-in tiny base."""
    if not tiny:
        return FLOW_ARCHS[arch]
    from brandtune.models.builtin import builtin_spec
    from brandtune.models.tokenizer import MODEL_MAX_LENGTH, T5_MAX_LENGTH
    from brandtune.sampling import default_sequence_length

    real = FLOW_ARCHS[arch]
    spec = builtin_spec(real["tiny"])
    cfg = spec.config
    transformer = dict(cfg["transformer"])
    vae = cfg["vae"]
    t5_tokens = default_sequence_length(spec.family, T5_MAX_LENGTH)  # what the tiny T5 tokenizer gives
    return {
        "family": spec.family,
        "name": spec.name,
        "transformer": transformer,
        "scheduler": {k: v for k, v in cfg["scheduler"].items() if k != "_class_name"},
        "latent_channels": vae["latent_channels"],
        "vae_factor": 2 ** (len(vae["block_out_channels"]) - 1),
        "shift_factor": vae["shift_factor"],
        "scaling_factor": vae["scaling_factor"],
        "text_tokens": t5_tokens + (MODEL_MAX_LENGTH if spec.family == "sd3" else 0),
        "text_dim": transformer["joint_attention_dim"],
        "pooled_dim": transformer["pooled_projection_dim"],
        "tiny": spec.name,
    }


def build_transformer(spec: dict[str, Any], device: Any, dtype: Any) -> Any:
    """The transformer of ``spec`` with random weights, made directly on ``device`` in ``dtype`` (seconds for 12B)."""
    import diffusers
    import torch

    cls = diffusers.FluxTransformer2DModel if spec["family"] == "flux" else diffusers.SD3Transformer2DModel
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**spec["transformer"])
    finally:
        torch.set_default_dtype(previous)
    return model.to(device, dtype=dtype)  # buffers made in fp32 too, as the scripts' .to(weight_dtype)


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


def _phase(name: str) -> None:
    """From now on the child's time goes to phase ``name`` (what no wrapped call claims)."""
    if CLOCK is not None:
        CLOCK.switch(name)


def _mark(name: str) -> None:
    if CLOCK is not None:
        CLOCK.mark(name)


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
    # the first step carries torch.compile's compile time (--compile regional|full): kept apart, and the median
    # and min of an --arch or compiled run are over the later steps
    out["first_step_s"] = out["step_times"][0] if times else float("nan")
    if (args.arch or args.compile != "none") and len(times) > 1:
        times = sorted(out["step_times"][1:])
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
    _phase("model load")
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
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
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
    _phase("loop")
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
    _phase("save")
    t_save = time.perf_counter()
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(accelerator.unwrap_model(unet)))
    StableDiffusionPipeline.save_lora_weights(Path(args.workdir) / "reference-lora", unet_lora_layers=layers)
    out["save_s"] = time.perf_counter() - t_save
    _mark("adapter")
    _phase("exit")
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


def _step_timer(module: Any, out: dict[str, Any]) -> None:
    """Record the wall time of each ``module.optimizer_step`` call (batch, forward, backward, optimizer) in
    ``out["step_times"]``; on a GPU it waits for the step's kernels before reading the clock."""
    inner, device = module.optimizer_step, out["_device"]
    times: list[float] = out.setdefault("step_times", [])

    def wrapper(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            _sync(device)
            times.append(time.perf_counter() - started)

    module.optimizer_step = wrapper


#: brandtune's functions whose calls are timed as a phase (module, name, phase); a name a module lacks is skipped.
BRANDTUNE_PHASES = (
    ("brandtune.training.run", "train", "other"),
    ("brandtune.training.run", "resolve_job", "plan"),
    ("brandtune.training.run", "read_dataset", "plan"),
    ("brandtune.training.run", "_choose", "plan"),
    ("brandtune.training.run", "_setup_models", "model load"),
    ("brandtune.training.run", "_encode", "encode/cache"),
    ("brandtune.training.run", "_start_tracking", "tracking"),
    ("brandtune.training.run", "run_loop", "loop"),
    ("brandtune.training.loop", "save_checkpoint", "checkpoints"),
    ("brandtune.training.lora", "save_adapter", "save"),
    ("brandtune.training.validation", "log_validation", "validation"),
)


def _wrap_phases() -> None:
    import importlib

    from brandtune.training.plan import TrainPlan

    assert CLOCK is not None
    for module_name, name, phase in BRANDTUNE_PHASES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            CLOCK.wrap(
                module, name, phase, after=(lambda: CLOCK.mark("adapter")) if phase == "save" else None
            )
    CLOCK.wrap(TrainPlan, "from_job", "plan")


def run_brandtune(args: argparse.Namespace, base: str, dataset_dir: Path) -> dict[str, Any]:
    """``brandtune.training.run.train`` with timers around its phases; returns the timings."""
    from brandtune.training import loop, run

    out: dict[str, Any] = {"_device": args.device}
    samplers: dict[str, RssSampler] = {}
    _timed(run, "_setup_models", out, "setup_s")
    _timed(run, "_encode", out, "encode_s")
    _timed(run, "run_loop", out, "loop_s", samplers)
    if hasattr(run, "_start_tracking"):
        _timed(run, "_start_tracking", out, "mlflow_start_s")
    _timed(run, "_finish", out, "finish_s")  # save adapter + validation images + MLflow artifacts
    _step_timer(loop, out)
    if CLOCK is not None:
        _wrap_phases()
    config = brandtune_config(
        args, base, dataset_dir.name, Path(args.workdir) / "brandtune-run", args.changes
    )
    t0 = time.perf_counter()
    result = run.train(config)
    _phase("exit")
    out["train_call_s"] = time.perf_counter() - t0
    out["final_loss"] = result.final_loss
    out["cache_hit"] = result.cache_hit
    out["loop_rss_rise_mib"] = (samplers["loop_s"].peak - samplers["loop_s"].start) / MIB
    del out["_device"]
    return _finish(out, args)


def brandtune_config(
    args: argparse.Namespace, base: str, dataset: str, output_dir: Path, variant_changes: dict[str, Any]
) -> Any:
    """The TrainConfig of brandtune's variants: the reference's work (its LoRA, schedule, precision, no masked
    loss), ``--compile``, and what the variant changes."""
    from brandtune.config import DEFAULT_UNET_TARGETS, TrainConfig

    same_work = {"masked_loss": False, "cpu_bf16": False, "compile": args.compile}
    if args.compile == "reduce-overhead":  # CUDA graphs replay one shape: centre crops, as the reference's
        same_work["aspect_buckets"] = False
    changes = {k: v for k, v in {**same_work, **variant_changes}.items() if k in TrainConfig.model_fields}
    config = TrainConfig(
        brand="acme",
        dataset=dataset,
        base_model=base,
        output_dir=output_dir,
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
        gradient_checkpointing=args.gradient_checkpointing,
        **changes,
    )
    if args.arch:  # only the UNet loop matters here: one short validation image instead of 4 x 20 steps
        config = config.model_copy(update={"validation_prompts": ["a photo of acme bottle"],
                                           "validation_inference_steps": 2})  # fmt: skip
    return config


class ProcessTreeWatch:
    """Watches a command as a user would time it: the peak RSS (``VmHWM``) of its process and of each descendant,
    by command line, and the moment ``target`` appears on disk; sampled from /proc every ``interval`` s."""

    def __init__(self, root: int, target: Path, interval: float = 0.02) -> None:
        self.root, self.target, self.interval = root, target, interval
        self.peaks: dict[int, tuple[str, int]] = {}  # pid -> (command line, peak RSS bytes)
        self.appeared: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def _sample(self) -> None:
        if self.appeared is None and self.target.exists():
            self.appeared = time.time()
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/status") as fh:
                    hwm = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")), 0)
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            self.peaks[pid] = (
                cmd or self.peaks.get(pid, ("", 0))[0],
                max(hwm, self.peaks.get(pid, ("", 0))[1]),
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcessTreeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_cli(args: argparse.Namespace, base: str) -> dict[str, Any]:
    """``brandtune train`` as a user runs and times it, from the parent: the command (its launcher resolves the
    job, opens the MLflow run, starts the training process and forwards its run log), the same TrainConfig as
    the in-process variant in a ``--config`` file. Walls from the spawn to the adapter on disk and to the
    command's exit; peak RSS of the training process and of the launcher."""
    import yaml

    from brandtune.ingest import find_dataset
    from brandtune.provenance import WEIGHTS_NAME

    work = Path(args.workdir)
    out_dir = work / "brandtune-cli-run"
    config = brandtune_config(args, base, find_dataset("acme").name, out_dir, {})
    config_file = work / "brandtune-cli.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    command = Path(sys.executable).with_name("brandtune")
    cmd = [str(command), "train", "--brand", config.brand, "--config", str(config_file), "--force"]
    spawned = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with ProcessTreeWatch(proc.pid, out_dir / "adapter" / WEIGHTS_NAME) as watch:
        output, _ = proc.communicate()
    exited = time.time()
    if proc.returncode != 0:
        print(output[-4000:])
        raise SystemExit(f"brandtune train failed (exit {proc.returncode})")
    if watch.appeared is None:
        raise SystemExit(f"brandtune train wrote no adapter at {out_dir / 'adapter'}")
    trainers = [rss for cmdline, rss in watch.peaks.values() if "brandtune.training" in cmdline]
    launcher = watch.peaks.get(proc.pid, ("", 0))[1]
    return {"cli": " ".join(["brandtune", *cmd[1:]]), "wall_to_adapter_s": watch.appeared - spawned,
            "wall_to_exit_s": exited - spawned, "peak_rss_mib": max(trainers, default=0) / MIB,
            "launcher_peak_rss_mib": launcher / MIB}  # fmt: skip


def print_cli_table(results: dict[str, dict[str, Any]]) -> None:
    """``brandtune train`` as a user times it, beside the reference's process."""
    if CLI_VARIANT not in results:
        return
    cli = results[CLI_VARIANT]
    print(f"\nas a user times it (`{cli['cli']}`; the reference: its process):\n")
    print("| variant | spawn to adapter on disk s | spawn to exit s | training process peak RSS MiB | "
          "launcher peak RSS MiB |\n| --- | ---: | ---: | ---: | ---: |")  # fmt: skip
    for name in ("reference", CLI_VARIANT):
        if (r := results.get(name)) is not None:
            launcher = f"{r['launcher_peak_rss_mib']:.0f}" if "launcher_peak_rss_mib" in r else "-"
            print(f"| {name} | {r['wall_to_adapter_s']:.2f} | {r['wall_to_exit_s']:.2f} | "
                  f"{r['peak_rss_mib']:.0f} | {launcher} |")  # fmt: skip
    if (ref := results.get("reference")) is not None:
        print(f"\n{CLI_VARIANT} / reference: spawn to adapter {ref['wall_to_adapter_s'] / cli['wall_to_adapter_s']:.2f}x "
              f"faster, spawn to exit {ref['wall_to_exit_s'] / cli['wall_to_exit_s']:.2f}x faster, training "
              f"process peak RSS {cli['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")  # fmt: skip


# ------------------------------------------------------------------------------- flow-matching transformers


def _weight_dtype(mixed_precision: str) -> Any:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def flow_data(spec: dict[str, Any], resolution: int, seed: int) -> dict[str, Any]:
    """A random "encoded dataset" of :data:`FLOW_EXAMPLES` examples in the shapes the real models take.

    Latent means and stds as brandtune's latent cache holds them (already shifted and scaled), prompt embeddings
    ``(N, text_tokens, text_dim)`` and pooled ones ``(N, pooled_dim)``; fp32 on the CPU. Its own generator, so the
    global RNG (weights, LoRA init) is the same in both variants.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1_000_003)
    side = resolution // spec["vae_factor"]
    shape = (FLOW_EXAMPLES, spec["latent_channels"], side, side)
    return {
        "latent_mean": torch.randn(shape, generator=gen),
        "latent_std": 0.02 + 0.03 * torch.rand(shape, generator=gen),
        "prompt_embeds": torch.randn(FLOW_EXAMPLES, spec["text_tokens"], spec["text_dim"], generator=gen),
        "pooled_embeds": torch.randn(FLOW_EXAMPLES, spec["pooled_dim"], generator=gen),
    }


def flow_train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig both flow variants train with: brandtune's defaults for a FLUX/SD3 base, the bench's size."""
    from brandtune.config import TrainConfig
    from brandtune.models.resolve import FLOW_TRAINING_DEFAULTS

    config = TrainConfig(
        brand="acme",
        rank=args.rank,
        max_train_steps=args.warmup_steps + args.steps,
        train_batch_size=args.batch_size,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        num_threads=args.threads,
        seed=args.seed,
        checkpointing_steps=0,
        validation_steps=0,
        cpu_bf16=False,  # the reference trains in the dtype --mixed-precision names, so does brandtune here
    )
    # target_modules ATTENTION_TRANSFORMER_TARGETS, learning rate 1e-4, constant schedule
    return config.with_base_defaults(FLOW_TRAINING_DEFAULTS)


@dataclass
class FlowBenchPlan:
    """What brandtune's loop reads of a :class:`~brandtune.training.plan.TrainPlan` (``run_loop``, ``Batches``,
    ``make_batch``, ``diffusion_loss`` and ``FlowOps.noised``/``predict``), and nothing else: a training plan
    without a brand, dataset folder or run folder."""

    config: Any
    ops: Any
    components: Any  # .denoiser (unwrapped: FlowOps reads its config) and .noise_scheduler
    encoded: Any  # one Encoded per aspect bucket
    weight_dtype: Any
    rank: int = 0
    world: int = 1
    class_encoded: Any = None

    @property
    def noise_scheduler(self) -> Any:
        return self.components.noise_scheduler


class StepLog:
    """Stands in for brandtune's MLflow tracker in ``run_loop``: keeps each step's ``step_time_s``."""

    def __init__(self) -> None:
        self.step_times: list[float] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.step_times.append(metrics["step_time_s"])


def _flow_loop(args: argparse.Namespace, out: dict[str, Any], loop: Any) -> None:
    """Run ``loop()`` (returns step times and the last loss) with the RSS sampler and the GPU peak around it."""
    _sync(args.device)
    _reset_gpu_peak(args.device, out)
    try:
        with RssSampler() as rss:
            started = time.perf_counter()
            out["step_times"], out["final_loss"] = loop()
            _sync(args.device)
            out["loop_s"] = time.perf_counter() - started
        out["loop_rss_rise_mib"] = (rss.peak - rss.start) / MIB
    finally:
        out["loop_peak_gpu_mib"] = _gpu_peak_mib(args.device)


def _count_params(out: dict[str, Any], model: Any) -> None:
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["lora_params_m"] = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    out["gradient_checkpointing"] = bool(model.is_gradient_checkpointing)


def run_flow_brandtune(args: argparse.Namespace, spec: dict[str, Any], out: dict[str, Any]) -> None:
    """brandtune's training step on ``spec``'s transformer: its ``run_loop`` (``optimizer_step``,
    ``diffusion_loss``, ``FlowOps``) over a plan-like object, with the LoRA, optimizer, schedule, accelerator
    and set-up order of ``brandtune.training.run``; the latent cache is ``spec``'s random tensors."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    from brandtune.training.data import Encoded
    from brandtune.training.families import FlowOps
    from brandtune.training.loop import run_loop
    from brandtune.training.lora import add_lora
    from brandtune.training.run import _optimizer
    from brandtune.training.state import Models, TrainState

    started = time.perf_counter()
    cfg = flow_train_config(args)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    torch.set_num_threads(args.threads)
    if accelerator.device.type == "cpu":  # as brandtune's _prepare does
        torch.set_flush_denormal(True)
    set_seed(cfg.seed)
    weight_dtype = _weight_dtype(cfg.mixed_precision)
    transformer = build_transformer(spec, accelerator.device, weight_dtype)
    add_lora(transformer, cfg.rank, cfg.lora_alpha, cfg.dropout, cfg.target_modules, "transformer")
    cast_training_params([transformer], dtype=torch.float32)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    scheduler = FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    components = SimpleNamespace(denoiser=transformer, noise_scheduler=scheduler)
    ops = FlowOps(spec["family"])
    ops.prepare(components, cfg)
    encoded = [Encoded.from_tensors(flow_data(spec, args.resolution, args.seed))]  # one bucket
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = _optimizer(cfg, params)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)  # fmt: skip
    prepared, optimizer = accelerator.prepare(transformer, optimizer)
    log = StepLog()
    state = TrainState(accelerator, Models(trained=(prepared,)), optimizer, lr_scheduler, tracker=log)
    plan = FlowBenchPlan(cfg, ops, components, encoded, weight_dtype)
    _count_params(out, transformer)
    out["setup_s"] = time.perf_counter() - started

    def loop() -> tuple[list[float], float]:
        loss = run_loop(plan, state, 0, None)
        return log.step_times, loss

    _flow_loop(args, out, loop)
    accelerator.end_training()


def run_flow_reference(args: argparse.Namespace, spec: dict[str, Any], out: dict[str, Any]) -> None:
    """The step of diffusers' ``train_dreambooth_lora_flux.py`` / ``train_dreambooth_lora_sd3.py`` with
    ``--cache_latents`` and pre-encoded prompts: ``latent_dist.sample()`` from the cache, shift and scale,
    ``compute_density_for_timestep_sampling``, the index into the scheduler copy's timesteps and ``get_sigmas``'
    lookup of each timestep in them, FLUX's ``_pack_latents``/``_prepare_latent_image_ids``/guidance tensor/
    ``_unpack_latents``, the weighted loss, ``clip_grad_norm_`` over all the transformer's parameters, torch AdamW
    (not fused), under an ``accelerate.Accelerator``; the same LoRA and hyper-parameters as brandtune's variant."""
    import copy

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import (
        cast_training_params,
        compute_density_for_timestep_sampling,
        compute_loss_weighting_for_sd3,
    )
    from peft import LoraConfig

    started = time.perf_counter()
    cfg = flow_train_config(args)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    torch.set_num_threads(args.threads)
    set_seed(cfg.seed)
    device = accelerator.device
    noise_scheduler_copy = copy.deepcopy(FlowMatchEulerDiscreteScheduler(**spec["scheduler"]))
    weight_dtype = _weight_dtype(cfg.mixed_precision)
    transformer = build_transformer(spec, device, weight_dtype)
    transformer.requires_grad_(False)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                                       init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))  # fmt: skip
    cast_training_params([transformer], dtype=torch.float32)
    _count_params(out, transformer)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params, "lr": cfg.learning_rate}], betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)  # fmt: skip
    # --cache_latents: one latent distribution per batch, on the device in the weight dtype (the VAE's raw latents:
    # the same distributions as brandtune's cache, before the shift and scale); prompt embeddings computed before the
    # loop and kept on the device, as the script does when the text encoders are not trained.
    data = flow_data(spec, args.resolution, args.seed)
    shift, scale = spec["shift_factor"], spec["scaling_factor"]
    raw = torch.cat([data["latent_mean"] / scale + shift, 2 * torch.log(data["latent_std"] / scale)], dim=1)
    bs = args.batch_size
    cache = []
    for b in range(max(1, FLOW_EXAMPLES // bs)):
        idx = [(b * bs + j) % FLOW_EXAMPLES for j in range(bs)]
        cache.append((DiagonalGaussianDistribution(raw[idx].to(device, weight_dtype)),
                      data["prompt_embeds"][idx].to(device, weight_dtype),
                      data["pooled_embeds"][idx].to(device, weight_dtype)))  # fmt: skip
    text_ids = torch.zeros(spec["text_tokens"], 3).to(device=device, dtype=weight_dtype)
    vae_scale_factor = spec["vae_factor"]
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)  # fmt: skip
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    flux = spec["family"] == "flux"
    guidance_embeds = flux and accelerator.unwrap_model(transformer).config.guidance_embeds
    out["setup_s"] = time.perf_counter() - started

    def get_sigmas(
        timesteps: torch.Tensor, n_dim: int = 4, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        sigmas = noise_scheduler_copy.sigmas.to(device=device, dtype=dtype)
        schedule_timesteps = noise_scheduler_copy.timesteps.to(device)
        timesteps = timesteps.to(device)
        step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
        sigma = sigmas[step_indices].flatten()
        while len(sigma.shape) < n_dim:
            sigma = sigma.unsqueeze(-1)
        return sigma

    def loop() -> tuple[list[float], float]:
        times: list[float] = []
        loss_value = float("nan")
        transformer.train()
        for step in range(cfg.max_train_steps):
            t_step = time.perf_counter()
            latent_dist, prompt_embeds, pooled_prompt_embeds = cache[step % len(cache)]
            with accelerator.accumulate(transformer):
                model_input = latent_dist.sample()
                model_input = (model_input - shift) * scale
                model_input = model_input.to(dtype=weight_dtype)
                noise = torch.randn_like(model_input)
                bsz = model_input.shape[0]
                u = compute_density_for_timestep_sampling(weighting_scheme=cfg.weighting_scheme, batch_size=bsz,
                                                          logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                                                          mode_scale=cfg.mode_scale)  # fmt: skip
                indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
                timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)
                sigmas = get_sigmas(timesteps, n_dim=model_input.ndim, dtype=model_input.dtype)
                noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
                if flux:
                    _, channels, height, width = model_input.shape
                    latent_image_ids = FluxPipeline._prepare_latent_image_ids(bsz, height // 2, width // 2, device,
                                                                              weight_dtype)  # fmt: skip
                    packed = FluxPipeline._pack_latents(noisy_model_input, bsz, channels, height, width)
                    guidance = None
                    if guidance_embeds:
                        guidance = torch.tensor([cfg.guidance], device=device).expand(bsz)
                    model_pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                                             pooled_projections=pooled_prompt_embeds,
                                             encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                                             img_ids=latent_image_ids, return_dict=False)[0]  # fmt: skip
                    model_pred = FluxPipeline._unpack_latents(model_pred, height=height * vae_scale_factor,
                                                              width=width * vae_scale_factor,
                                                              vae_scale_factor=vae_scale_factor)  # fmt: skip
                    target = noise - model_input
                else:
                    model_pred = transformer(hidden_states=noisy_model_input, timestep=timesteps,
                                             encoder_hidden_states=prompt_embeds,
                                             pooled_projections=pooled_prompt_embeds, return_dict=False)[0]  # fmt: skip
                    if SD3_PRECONDITION_OUTPUTS:
                        model_pred = model_pred * (-sigmas) + noisy_model_input
                    target = model_input if SD3_PRECONDITION_OUTPUTS else noise - model_input
                weighting = compute_loss_weighting_for_sd3(
                    weighting_scheme=cfg.weighting_scheme, sigmas=sigmas
                )
                loss = torch.mean((weighting.float() * (model_pred.float() - target.float()) ** 2)
                                  .reshape(target.shape[0], -1), 1).mean()  # fmt: skip
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            loss_value = loss.detach().item()  # the script logs the loss every step
            times.append(time.perf_counter() - t_step)
        return times, loss_value

    _flow_loop(args, out, loop)
    accelerator.end_training()


def run_flow(args: argparse.Namespace) -> dict[str, Any]:
    """One flow variant (``args.only``) on ``args.arch``; a CUDA out-of-memory is a result ("OOM"), not a failure."""
    import torch

    spec = flow_arch(args.arch, args.tiny)
    out: dict[str, Any] = {}
    runner = run_flow_brandtune if args.only == "brandtune" else run_flow_reference
    try:
        runner(args, spec, out)
    except torch.cuda.OutOfMemoryError as exc:
        out["oom"] = str(exc).splitlines()[0][:300]
        out["loop_peak_gpu_mib"] = _gpu_peak_mib(args.device)
    return _finish_flow(out, args)


def _finish_flow(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    nan = float("nan")
    out["end_to_end_s"] = time.perf_counter() - _T_PROCESS
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    times = out.get("step_times") or []
    measured = sorted(times[args.warmup_steps :])
    out["first_step_s"] = times[0] if times else nan
    out["s_per_step"] = sum(measured) / len(measured) if measured else nan
    out["median_step_s"] = measured[len(measured) // 2] if measured else nan
    out["min_step_s"] = measured[0] if measured else nan
    out["images_per_s"] = args.batch_size / out["s_per_step"] if measured else nan
    if args.device == "cuda":
        peaks = (
            out.get("pre_loop_peak_gpu_mib", 0.0),
            out.get("loop_peak_gpu_mib", 0.0),
            _gpu_peak_mib(args.device),
        )
        out["peak_gpu_mib"] = max(peaks)
    out.setdefault("final_loss", nan)
    return out


# ---------------------------------------------------------------------------------------------- parent


def _child_args(args: argparse.Namespace, variant: str, result: Path) -> list[str]:
    flags = ["--steps", args.steps, "--batch-size", args.batch_size, "--resolution", args.resolution,
             "--rank", args.rank, "--threads", args.threads, "--base", args.base, "--seed", args.seed,
             "--device", args.device, "--mixed-precision", args.mixed_precision, "--workdir", args.workdir,
             "--warmup-steps", args.warmup_steps, "--only", variant, "--result", result,
             "--compile", args.compile]  # fmt: skip
    if args.arch:
        flags += ["--arch", args.arch]
    flags += [f"--{name}" for name in ("flush-denormal", "gradient-checkpointing", "tiny")
              if getattr(args, name.replace("-", "_"))]  # fmt: skip
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
    _warm_tracking_store()
    return base, dataset_dir


def _warm_tracking_store() -> None:
    """Create the MLflow store here (a fresh sqlite store's migrations take 2-7 s), so that no brandtune child pays
    for it and the variants are timed alike: the steady state of a user's second training."""
    import mlflow

    from brandtune.settings import Settings

    mlflow.MlflowClient(Settings.from_env().tracking_uri).search_experiments()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [
            ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return cpu


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}, {cpu_name()}, os.cpu_count()={os.cpu_count()}"


def _versions() -> str:
    """Library versions, read without importing them (the parent stays light)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "diffusers", "peft", "accelerate"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def _print_header(args: argparse.Namespace) -> None:
    gpu = "none"
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name()
    print(f"\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {_machine()}; GPU: {gpu}; load average at end: {os.getloadavg()[0]:.1f}")
    print(f"python {platform.python_version()}, {_versions()}; torch threads {args.threads} "
          f"(set with torch.set_num_threads; {', '.join(f'{v}={os.environ.get(v)}' for v in THREAD_VARS)})")  # fmt: skip


def print_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    if args.arch in FLOW_ARCHS:
        print_flow_table(args, results)
        return
    _print_header(args)
    print(f"base {args.arch or args.base}, {args.resolution} px, batch {args.batch_size}, rank {args.rank}, "
          f"{args.steps} steps, mixed precision {args.mixed_precision}, device {args.device}, "
          f"gradient checkpointing {args.gradient_checkpointing}, flush denormals {args.flush_denormal}"
          f"{f', compile {args.compile}' if args.compile != 'none' else ''}\n")  # fmt: skip
    cols = ["variant", "loop steps/s", "images/s", "median step s", "min step s", "loop s", "setup s", "encode s",
            "MLflow start s", "save+validation s", "end-to-end s", "peak RSS MiB", "loop RSS + MiB",
            "final loss"]  # fmt: skip
    first = bool(args.arch or args.compile != "none")  # the compile column (not in the CPU headline table)
    if first:
        cols[5:5] = ["first step s (compile)"]
    if args.device == "cuda":
        cols[-1:-1] = ["loop peak GPU MiB", "peak GPU MiB"]
    print("| " + " | ".join(cols) + " |")
    print("| --- " + "| ---: " * (len(cols) - 1) + "|")
    for name, r in results.items():
        row = [name, f"{r['loop_steps_per_s']:.2f}", f"{r['images_per_s']:.1f}",
               f"{r['median_step_s']:.3f}", f"{r['min_step_s']:.3f}",
               *([f"{r['first_step_s']:.3f}"] if first else []),
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


def _with_process_times(result: dict[str, Any], spawned: float, exited: float) -> dict[str, Any]:
    """Add what only the parent sees: the interpreter's start-up before the child's first line, its exit after
    the result was written, and the walls from the spawn to the adapter on disk and to the exit."""
    marks = result.get("marks")
    if not marks:
        return result
    phases = result["phases"]
    phases["interpreter"] = marks["first_line"] - spawned
    phases["exit"] = phases.get("exit", 0.0) + exited - marks["done"]
    result["wall_to_adapter_s"] = marks["adapter"] - spawned
    result["wall_to_exit_s"] = exited - spawned
    return result


def print_phase_table(results: dict[str, dict[str, Any]]) -> None:
    """Seconds per phase of each child, from its spawn to its exit (imports wherever they happen)."""
    names = [n for n, r in results.items() if "phases" in r]
    if not names:
        return
    print("\nphases (s; each moment of a child's life in exactly one row; imports wherever they happen):\n")
    print("| phase | " + " | ".join(names) + " |")
    print("| --- " + "| ---: " * len(names) + "|")
    rows = list(PHASE_ROWS) + sorted({p for n in names for p in results[n]["phases"]} - set(PHASE_ROWS))
    for phase in rows:
        cells = [results[n]["phases"].get(phase) for n in names]
        if all(c is None for c in cells):
            continue
        print(f"| {phase} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    for label, key, fmt in (("**spawn to adapter on disk**", "wall_to_adapter_s", "{:.2f}"),
                            ("spawn to exit", "wall_to_exit_s", "{:.2f}"),
                            ("peak RSS MiB", "peak_rss_mib", "{:.0f}")):  # fmt: skip
        print(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")
    if "reference" in results:
        ref = results["reference"]
        for name in names:
            if name != "reference":
                r = results[name]
                print(f"\n{name} / reference: spawn to adapter {ref['wall_to_adapter_s'] / r['wall_to_adapter_s']:.2f}x "
                      f"faster, loop {ref['phases']['loop'] / r['phases']['loop']:.2f}x faster, "
                      f"peak RSS {r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")  # fmt: skip


def print_flow_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """The flow-matching table: s/step over the steps after the warm-up, and peak memory, per variant."""
    spec = flow_arch(args.arch, args.tiny)
    _print_header(args)
    sizes = next((r for r in results.values() if "params_m" in r), {})
    print(f"model {spec['name']} transformer ({sizes.get('params_m', float('nan')):,.1f}M parameters, random "
          f"weights), LoRA rank {args.rank} on {', '.join(flow_train_config(args).target_modules)} "
          f"({sizes.get('lora_params_m', float('nan')):.2f}M trainable); {args.resolution} px "
          f"(latents {spec['latent_channels']}x{args.resolution // spec['vae_factor']}x"
          f"{args.resolution // spec['vae_factor']}), text ({args.batch_size}, {spec['text_tokens']}, "
          f"{spec['text_dim']}) + pooled ({args.batch_size}, {spec['pooled_dim']}); batch {args.batch_size}, "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps, mixed precision {args.mixed_precision}, "
          f"device {args.device}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}\n")  # fmt: skip
    cols = ["variant", "s/step", "images/s", "median step s", "min step s", "first step s", "setup s",
            "end-to-end s", "peak RSS MiB", "loop RSS + MiB"]  # fmt: skip
    if args.device == "cuda":
        cols += ["loop peak GPU MiB", "peak GPU MiB"]
    cols.append("final loss")
    print("| " + " | ".join(cols) + " |")
    print("| --- " + "| ---: " * (len(cols) - 1) + "|")
    for name, r in results.items():
        if "oom" in r:  # the step ran out of GPU memory: the peak it had reached, no timings
            row = [name] + ["OOM"] * 5 + [f"{r.get('setup_s', float('nan')):.1f}", f"{r['end_to_end_s']:.1f}",
                                          f"{r['peak_rss_mib']:.0f}", "-"]  # fmt: skip
            if args.device == "cuda":
                row += [
                    f"{r.get('loop_peak_gpu_mib', float('nan')):.0f}",
                    f"{r.get('peak_gpu_mib', float('nan')):.0f}",
                ]
            row.append("-")
        else:
            row = [name, f"{r['s_per_step']:.4f}", f"{r['images_per_s']:.2f}", f"{r['median_step_s']:.4f}",
                   f"{r['min_step_s']:.4f}", f"{r['first_step_s']:.3f}", f"{r['setup_s']:.1f}",
                   f"{r['end_to_end_s']:.1f}", f"{r['peak_rss_mib']:.0f}", f"{r['loop_rss_rise_mib']:.1f}"]  # fmt: skip
            if args.device == "cuda":
                row += [f"{r['loop_peak_gpu_mib']:.0f}", f"{r['peak_gpu_mib']:.0f}"]
            row.append(f"{r['final_loss']:.4f}")
        print("| " + " | ".join(row) + " |")
    for name, r in results.items():
        if "oom" in r:
            print(f"\n{name} ran out of GPU memory: {r['oom']}")
    if set(VARIANTS) <= results.keys() and not any("oom" in r for r in results.values()):
        ref, bt = results["reference"], results["brandtune"]
        line = (f"\nbrandtune / reference: s/step {ref['s_per_step'] / bt['s_per_step']:.2f}x faster, "
                f"median step {ref['median_step_s'] / bt['median_step_s']:.2f}x faster, "
                f"peak RSS {bt['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")  # fmt: skip
        if args.device == "cuda":
            line += f", loop peak GPU memory {bt['loop_peak_gpu_mib'] / ref['loop_peak_gpu_mib']:.2f}x"
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="Timed steps (default 300; flux/sd3: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="Default 4; flux/sd3: 1")
    p.add_argument("--resolution", type=int, default=None, help="Default 64; flux/sd3: 512 (--tiny: 64)")
    p.add_argument("--rank", type=int, default=None, help="Default 4; flux/sd3: 16")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child (and OMP_*)")
    p.add_argument("--base", default="builtin:tiny")
    p.add_argument("--arch", choices=sorted(ARCH_CONFIGS) + sorted(FLOW_ARCHS), default=None,
                   help="sd15/sdxl: a UNet of this architecture with random weights instead of --base; flux/sd3: "
                        "the FLUX.1-dev or SD3.5-medium transformer, random weights, random latents and "
                        "text embeddings of the real shapes")  # fmt: skip
    p.add_argument("--tiny", action="store_true",
                   help="flux/sd3: builtin:tiny-flux's / builtin:tiny-sd3's transformer instead (runs on a CPU)")  # fmt: skip
    p.add_argument("--warmup-steps", type=int, default=2,
                   help="flux/sd3: untimed steps before the timed ones (first-step set-up, allocator)")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="Recompute activations in the backward pass, in both variants")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument(
        "--variants", default=None, help="Comma-separated; default: both (brandtune only for sdxl)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", choices=["none", "regional", "full", "reduce-overhead"], default="none",
                   help="brandtune's TrainConfig.compile (the reference stays eager); compile time lands in the loop and in "
                        "the first step, shown apart as 'first step s (compile)'")  # fmt: skip
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) in both children (random tiny models hit denormals on CPU)")  # fmt: skip
    p.add_argument(
        "--home", type=Path, default=None, help="BRANDTUNE_HOME to use (default: a fresh temp dir)"
    )
    p.add_argument("--json", type=Path, default=None, help="Also write the results here")
    p.add_argument("--before", type=Path, default=None,
                   help="A source tree of an earlier brandtune (e.g. `git archive <commit> | tar -x -C DIR`): "
                        "adds the variant brandtune-before, the headline's settings on that code")  # fmt: skip
    p.add_argument("--only", choices=(*VARIANTS, *EXTRA_VARIANTS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    flow = args.arch in FLOW_ARCHS
    if args.tiny and not flow:
        p.error("--tiny goes with --arch flux or --arch sd3")
    defaults = {"steps": 10, "batch_size": 1, "resolution": 64 if args.tiny else 512, "rank": 16} if flow else {
        "steps": 300, "batch_size": 4, "resolution": 64, "rank": 4}  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if flow:
        spec = flow_arch(args.arch, args.tiny)
        multiple = 2 * spec["vae_factor"]  # FLUX packs 2x2 latents into a token; SD3 patches them 2x2
        if args.resolution % multiple:
            p.error(f"--resolution {args.resolution} is not a multiple of {multiple} for --arch {args.arch}"
                    f"{' --tiny' if args.tiny else ''} (VAE factor {spec['vae_factor']} x 2x2 patches); "
                    f"use {max(multiple, args.resolution // multiple * multiple)}")  # fmt: skip
    if args.warmup_steps < 0 or args.steps < 1:
        p.error("--steps must be at least 1 and --warmup-steps at least 0")
    return args


def child(args: argparse.Namespace) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    if args.arch in FLOW_ARCHS:
        args.result.write_text(json.dumps(run_flow(args)))
        return 0
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
        args.changes = EXTRA_VARIANTS.get(args.only, {})
        result = run_brandtune(args, base, dataset_dir)
    if CLOCK is not None:
        result["phases"] = CLOCK.snapshot()
        CLOCK.mark("done")
        result["marks"] = CLOCK.marks
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
    if args.arch not in FLOW_ARCHS:  # the flow variants build their transformer and data in each child
        t0 = time.perf_counter()
        base, _ = prepare(args)
        print(
            f"BRANDTUNE_HOME={home}; dataset and base ready in {time.perf_counter() - t0:.1f} s", flush=True
        )
    default = ["brandtune"] if args.arch == "sdxl" else list(VARIANTS)
    if args.arch is None:
        default.append(CLI_VARIANT)
    variants = args.variants.split(",") if args.variants else default
    if args.before is not None and "brandtune-before" not in variants:
        variants.append("brandtune-before")
    known = (*VARIANTS, *EXTRA_VARIANTS, CLI_VARIANT)
    if unknown := [v for v in variants if v not in known]:
        raise SystemExit(f"--variants {','.join(unknown)}: unknown; use {', '.join(known)}")
    if CLI_VARIANT in variants and args.arch is not None:
        raise SystemExit(f"--variants {CLI_VARIANT} times builtin bases (--base), not --arch")
    if args.arch == "sdxl" and "reference" in variants:
        raise SystemExit("the reference loop is SD 1.x-shaped; for --arch sdxl use --variants brandtune")
    results: dict[str, dict[str, Any]] = {}
    cli_result: dict[str, Any] | None = None
    for variant in variants:
        result_file = Path(args.workdir) / f"{variant}.json"
        print(f"running {variant} ...", flush=True)
        if variant == CLI_VARIANT:
            cli_result = run_cli(args, base)
            continue
        spawned = time.time()
        env = dict(os.environ)
        # brandtune's forwarder in a process of its own, as `brandtune train`'s launcher runs it: the timed child is
        # the training process alone (no `import mlflow`), which brandtune-cli times from outside
        env.setdefault("BRANDTUNE_FORWARDER", "sidecar")
        if variant == "brandtune-before":  # that tree's brandtune package first on the child's path
            env["PYTHONPATH"] = os.pathsep.join([str(args.before), env.get("PYTHONPATH", "")])
        proc = subprocess.run(_child_args(args, variant, result_file), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
        exited = time.time()
        if proc.returncode != 0:
            print(proc.stdout[-4000:])
            raise SystemExit(f"{variant} failed (exit {proc.returncode})")
        results[variant] = _with_process_times(json.loads(result_file.read_text()), spawned, exited)
    print_table(args, results)
    if args.arch is None:
        print_phase_table(results)
    if cli_result is not None:
        results[CLI_VARIANT] = cli_result
        print_cli_table(results)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
