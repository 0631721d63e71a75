"""Base-model commands of the ``brandtune`` CLI: ``base build-tiny`` and ``base sample``.

``brandtune.cli`` calls :func:`add_commands` with its ``base`` sub-app. Commands only parse, call the library and
report; torch and diffusers are imported inside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

#: Where the shipped builtin:tiny weights live (``brandtune/assets/builtin_tiny``).
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "builtin_tiny"


def build_tiny_cmd(
    dest: Annotated[Path, typer.Option(help="Output diffusers folder (must not exist).")] = ASSET_DIR,
    seed: Annotated[int, typer.Option(help="Seed of data, weights, noise and order.")] = 0,
    num_images: Annotated[int | None, typer.Option(help="Procedural scenes to render.")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE optimizer steps.")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="UNet + text encoder optimizer steps.")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (1 is best on a busy machine).")] = 1,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
) -> None:
    """Pretrain builtin:tiny from scratch on procedural product scenes (about 30-60 min on 2 CPU cores)."""
    from brandtune.models.pretrain import PretrainConfig, pretrain

    overrides = {"num_images": num_images, "vae_steps": vae_steps, "unet_steps": unet_steps}
    config = PretrainConfig(
        seed=seed,
        num_threads=threads,
        tracking=not no_tracking,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    result = pretrain(config, dest)
    console.print(
        f"[bold green]pretrained[/] builtin:tiny in {result.wall_s / 60:.1f} min "
        f"({result.cpu_s / 60:.1f} CPU min): VAE {result.vae_psnr:.1f} dB, UNet loss {result.unet_loss:.4f}"
    )
    console.print(f"  folder: {result.path}")
    if result.mlflow_run_id:
        console.print(f"  MLflow run: {result.mlflow_run_id} (experiment brandtune/builtin-tiny)")


def sample_cmd(
    prompt: Annotated[str, typer.Argument(help='What to draw, e.g. "a red mug on a beach".')],
    model: Annotated[str, typer.Option(help="Base model ref or folder.")] = "builtin:tiny",
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to load on top.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; the others use seed+1, ...")] = 0,
    num: Annotated[int, typer.Option("--num", "-n", min=1, max=64, help="Images in the grid.")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 4.0,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("sample.png"),
) -> None:
    """Draw a grid of samples of a prompt from a base model (and optionally an adapter)."""
    import io

    from brandtune.fsutil import atomic_write_bytes
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.models.loading import load_adapter
    from brandtune.models.sampling import image_grid, sample_images

    pipe = load_base_pipeline(resolve_base(model))
    if adapter is not None:
        load_adapter(pipe, adapter)
    images = sample_images(
        pipe, [prompt] * num, [seed + i for i in range(num)], steps=steps, guidance=guidance
    )
    buffer = io.BytesIO()
    image_grid(images, columns=min(num, 8)).save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    console.print(f"[bold green]wrote[/] {out} ({num} samples of {prompt!r}, seeds {seed}..{seed + num - 1})")


def add_commands(base_app: typer.Typer) -> None:
    """Register the commands on the ``brandtune base`` sub-app."""
    base_app.command("build-tiny")(build_tiny_cmd)
    base_app.command("sample")(sample_cmd)
