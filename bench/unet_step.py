"""One LoRA training step of the builtin:tiny UNet alone, eager vs channels_last vs torch.compile, in one process.

It answers "how much of a training step is the UNet, and do the CPU fast paths help": forward, backward and a
fused AdamW step on the LoRA parameters (rank 8, to_q/to_k/to_v/to_out.0) for a batch of cached-size latents.

    OMP_NUM_THREADS=1 .venv/bin/python bench/unet_step.py --threads 1 --batch-size 4 --steps 60
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def _unet(rank: int):
    from peft import LoraConfig

    from brandtune.config import DEFAULT_UNET_TARGETS
    from brandtune.models import load_base_pipeline, resolve_base

    unet = load_base_pipeline(resolve_base("builtin:tiny")).unet
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(DEFAULT_UNET_TARGETS)
        )
    )
    return unet


def _steps(
    model, cfg, params, batch: int, steps: int, memory_format, bf16: bool = False, dtype=None
) -> list[float]:
    import contextlib

    import torch

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    latents = latents.contiguous(memory_format=memory_format)
    text = torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen)
    if (
        dtype is not None
    ):  # the inputs in the frozen weights' dtype, as brandtune's mixed precision feeds them
        latents, text = latents.to(dtype), text.to(dtype)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    times = []
    for _ in range(steps):
        t = torch.randint(0, 1000, (batch,), generator=gen)
        t0 = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = model(latents, t, encoder_hidden_states=text).sample.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--no-compile", action="store_true", help="Skip the torch.compile variant.")
    parser.add_argument(
        "--variants",
        default=None,
        help="Comma-separated, of: eager, channels_last, torch.compile, bf16-autocast (fp32 weights, CPU bf16 "
        "autocast), bf16-weights (frozen weights in bf16, LoRA fp32, autocast). Default: the first three.",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = []
    variants = ["eager", "channels_last"] + ([] if args.no_compile else ["torch.compile"])
    if args.variants:
        variants = args.variants.split(",")
    for name in variants:
        unet = _unet(args.rank)
        fmt = torch.contiguous_format
        if name == "channels_last":
            fmt = torch.channels_last
            unet.to(memory_format=fmt)
        if name == "bf16-weights":
            unet.to(dtype=torch.bfloat16)
            for p in unet.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        params = [p for p in unet.parameters() if p.requires_grad]
        model = torch.compile(unet) if name == "torch.compile" else unet
        bf16 = name in {"bf16-autocast", "bf16-weights"}
        dtype = torch.bfloat16 if name == "bf16-weights" else None
        times = _steps(model, unet.config, params, args.batch_size, args.steps, fmt, bf16, dtype)
        rows.append((name, times[0], statistics.median(times[5:]), min(times[5:])))
    eager = rows[0][2]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, cpus={os.cpu_count()}, torch threads="
        f"{torch.get_num_threads()}, torch {torch.__version__}; builtin:tiny UNet, LoRA rank {args.rank}, batch "
        f"{args.batch_size}, {args.steps} steps (median/min over steps 6+)"
    )
    print(
        "| variant | first step s | median step s | min step s | vs eager |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for name, first, median, fastest in rows:
        print(f"| {name} | {first:.3f} | {median:.3f} | {fastest:.3f} | {eager / median:.2f}x |")


if __name__ == "__main__":
    main()
