"""The ``brandtune base`` group: base diffusion models (``list``, ``export``, ``build-tiny``, ``sample``).

Commands only parse, call the library and report; torch and diffusers are imported inside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from brandtune.cli._common import console, given
from brandtune.config import job_config

#: Where the shipped builtin:tiny weights live (``brandtune/assets/builtin_tiny``).
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "builtin_tiny"


def add_commands(app: typer.Typer) -> None:
    """Add the ``base`` group to the ``brandtune`` app."""
    base_app = typer.Typer(
        help="Base diffusion models: list, export as a diffusers folder.", no_args_is_help=True
    )
    base_app.command("list")(base_list)
    base_app.command("export")(base_export)
    base_app.command("build-tiny")(build_tiny_cmd)
    base_app.command("sample")(sample_cmd)
    app.add_typer(base_app, name="base")


def base_list() -> None:
    """List the built-in base models."""
    from brandtune.models import BUILTIN_MODELS

    table = Table("name", "description")
    for name, desc in BUILTIN_MODELS.items():
        table.add_row(f"builtin:{name}", desc)
    console.print(table)


def base_export(
    name: Annotated[str, typer.Argument(help="Base model: builtin:tiny, a local folder or a hub id.")],
    dest: Annotated[Path, typer.Argument(help="Folder to write the diffusers model to.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty destination.")] = False,
) -> None:
    """Write a base model as a plain diffusers folder that other tools can load."""
    from brandtune.models import export_base, resolve_base

    out = export_base(name, dest, overwrite=overwrite)
    resolved = resolve_base(name)
    console.print(f"[bold green]exported[/] {name} ({resolved.family}, {resolved.revision[:19]}) to {out}")


def build_tiny_cmd(
    ctx: typer.Context,
    dest: Annotated[Path, typer.Option(help="Output diffusers folder (must not exist).")] = ASSET_DIR,
    seed: Annotated[int, typer.Option(help="Seed of data, weights, noise and order.")] = 0,
    num_images: Annotated[int | None, typer.Option(help="Procedural scenes to render.")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE optimizer steps.")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="UNet + text encoder optimizer steps.")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (1 is best on a busy machine).")] = 1,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    config: Annotated[Path | None, typer.Option(help="PretrainConfig YAML; flags override it.")] = None,
) -> None:
    """Pretrain builtin:tiny from scratch on procedural product scenes (about 30-60 min on 2 CPU cores)."""
    from brandtune.config import PretrainConfig
    from brandtune.models.pretrain import pretrain

    flags = given(
        ctx,
        {
            "seed": ("seed", seed),
            "num_images": ("num_images", num_images),
            "vae_steps": ("vae_steps", vae_steps),
            "unet_steps": ("unet_steps", unet_steps),
            "threads": ("num_threads", threads),
            "no_tracking": ("tracking", not no_tracking),
        },
    )
    result = pretrain(job_config(PretrainConfig, config, flags), dest)
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
    from brandtune.images import image_grid, save_png
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.models.loading import load_adapter
    from brandtune.sampling import sample_images

    pipe = load_base_pipeline(resolve_base(model))
    if adapter is not None:
        load_adapter(pipe, adapter)
    images = sample_images(
        pipe, [prompt] * num, [seed + i for i in range(num)], steps=steps, guidance=guidance
    )
    save_png(image_grid(images, columns=min(num, 8)), out)
    console.print(f"[bold green]wrote[/] {out} ({num} samples of {prompt!r}, seeds {seed}..{seed + num - 1})")
