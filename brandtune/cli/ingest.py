"""``brandtune ingest``: a brand's photos into a versioned dataset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from brandtune.cli._common import BrandOpt, console, given
from brandtune.config import job_config


def add_commands(app: typer.Typer) -> None:
    """Add ``ingest`` to the ``brandtune`` app."""
    app.command("ingest")(ingest_cmd)


def ingest_cmd(
    ctx: typer.Context,
    brand: BrandOpt,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source", "-s", help="Folder, .zip or image file (repeatable). Default: the brand's photos/."
        ),
    ] = None,
    resolution: Annotated[int | None, typer.Option(help="Output size in px (default: brand.yaml).")] = None,
    min_images: Annotated[int | None, typer.Option(help="Fail when fewer photos are accepted.")] = None,
    config: Annotated[Path | None, typer.Option(help="IngestConfig YAML; flags override it.")] = None,
) -> None:
    """Validate, normalise and caption a brand's photos into a versioned dataset."""
    from brandtune.config import IngestConfig, brand_dir, load_brand
    from brandtune.ingest import ingest

    spec = load_brand(brand)
    sources = source or [brand_dir(spec.name) / "photos"]
    flags = given(ctx, {"resolution": ("resolution", resolution), "min_images": ("min_images", min_images)})
    # defaults, then what brand.yaml implies (resolution, trigger, subject, caption), then the file, then flags
    cfg = job_config(IngestConfig, config, flags, defaults=IngestConfig.for_brand(spec).model_dump())
    result = ingest(spec, sources, cfg, progress=sys.stderr.isatty())
    state = "reused existing dataset" if result.reused else "new dataset"
    console.print(f"[bold green]dataset[/] {result.brand}/{result.fingerprint} ({state})")
    console.print(f"  images:   {result.num_images} accepted, {result.num_rejected} rejected")
    console.print(f"  folder:   {result.path}")
    masks = ", ".join(f"{n} {source}" for source, n in result.mask_counts().items() if n)
    console.print(f"  masks:    {masks or 'none'}")
    console.print(f"  sheet:    {result.contact_sheet}")
    console.print(f"  report:   {result.report_path}")
