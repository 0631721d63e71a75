"""The ``brandtune`` command line: thin commands that parse flags, call the library and report.

Errors raised on purpose (:class:`~brandtune.errors.BrandtuneError`) are shown as one readable line; ``--debug``
shows the full traceback. Heavy libraries (torch, diffusers, mlflow) are imported inside the commands that need them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from brandtune.errors import BrandtuneError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from brandtune.ingest import IngestResult

M = TypeVar("M", bound="BaseModel")

app = typer.Typer(
    name="brandtune",
    help="Brand imagery pipeline: ingest product photos, LoRA-fine-tune, register, evaluate, generate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
base_app = typer.Typer(
    help="Base diffusion models: list, export as a diffusers folder.", no_args_is_help=True
)
app.add_typer(base_app, name="base")

console = Console()
err_console = Console(stderr=True)

BrandOpt = Annotated[
    str, typer.Option("--brand", "-b", help="Brand slug (folder under data/brands) or brand.yaml.")
]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log INFO messages.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and DEBUG logs.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        os.environ["BRANDTUNE_DEBUG"] = "1"


def _ingest(
    brand: str, source: list[Path] | None, resolution: int | None, min_images: int | None
) -> IngestResult:
    from brandtune.config import IngestConfig, brand_dir, load_brand
    from brandtune.ingest import ingest

    spec = load_brand(brand)
    sources = source or [brand_dir(spec.name) / "photos"]
    cfg = IngestConfig.for_brand(spec, resolution=resolution, min_images=min_images)
    return ingest(spec, sources, cfg, progress=sys.stderr.isatty())


@app.command("ingest")
def ingest_cmd(
    brand: BrandOpt,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source", "-s", help="Folder, .zip or image file (repeatable). Default: the brand's photos/."
        ),
    ] = None,
    resolution: Annotated[int | None, typer.Option(help="Output size in px (default: brand.yaml).")] = None,
    min_images: Annotated[int | None, typer.Option(help="Fail when fewer photos are accepted.")] = None,
) -> None:
    """Validate, normalise and caption a brand's photos into a versioned dataset."""
    result = _ingest(brand, source, resolution, min_images)
    state = "reused existing dataset" if result.reused else "new dataset"
    console.print(f"[bold green]dataset[/] {result.brand}/{result.fingerprint} ({state})")
    console.print(f"  images:   {result.num_images} accepted, {result.num_rejected} rejected")
    console.print(f"  folder:   {result.path}")
    console.print(f"  report:   {result.report_path}")


@app.command("train")
def train_cmd(
    brand: BrandOpt,
    config: Annotated[Path | None, typer.Option(help="TrainConfig YAML; flags override it.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset fingerprint (default: latest).")] = None,
    base: Annotated[str | None, typer.Option(help="Base model (default: brand.yaml).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process per step.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Training resolution in px.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run folder (default: derived from the config).")
    ] = None,
    resume: Annotated[str | None, typer.Option(help="'latest': continue from the newest checkpoint.")] = None,
    export: Annotated[str | None, typer.Option(help="'kohya': also write a kohya-format LoRA.")] = None,
    num_processes: Annotated[int, typer.Option(help="Processes (accelerate launch; DDP).")] = 1,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="accelerate config file (multi-GPU/FSDP).")
    ] = None,
) -> None:
    """LoRA-fine-tune the brand's base model on its dataset (runs as a child process)."""
    from brandtune.config import ConfigError, load_yaml_model
    from brandtune.training import TrainConfig
    from brandtune.training.launch import launch

    if export not in (None, "kohya"):
        raise ConfigError(f"--export {export!r}: the only export format is 'kohya'")
    overrides = {
        "brand": brand,
        "dataset": dataset,
        "base_model": base,
        "max_train_steps": steps,
        "train_batch_size": batch_size,
        "rank": rank,
        "resolution": resolution,
        "learning_rate": learning_rate,
        "seed": seed,
        "output_dir": output,
        "resume": resume,
        "export_kohya": True if export else None,
    }
    if config is not None:
        cfg = load_yaml_model(TrainConfig, config, overrides)
    else:
        cfg = _validated(
            TrainConfig, {k: v for k, v in overrides.items() if v is not None}, "command-line flags"
        )
    result = launch(
        cfg,
        num_processes=num_processes,
        accelerate_config=accelerate_config,
        on_line=lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True),
    )
    console.print(f"[bold green]adapter[/] {result['adapter_dir']}")
    console.print(
        f"  MLflow run: {result['mlflow_run_id']}   steps: {result['steps']}   loss: {result['final_loss']}"
    )


def _validated(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` as ``model``, turning validation errors into one ConfigError naming ``source``."""
    from pydantic import ValidationError

    from brandtune.config import ConfigError, format_validation_error

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


@base_app.command("list")
def base_list() -> None:
    """List the built-in base models."""
    from brandtune.models import BUILTIN_MODELS

    table = Table("name", "description")
    for name, desc in BUILTIN_MODELS.items():
        table.add_row(f"builtin:{name}", desc)
    console.print(table)


@base_app.command("export")
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


@app.command("demo")
def demo(
    brand: BrandOpt = "acme",
    steps: Annotated[int | None, typer.Option(help="Training steps (default: the demo's).")] = None,
) -> None:
    """Run the whole pipeline on the built-in sample brand and print where to look."""
    from brandtune.demo import DEMO_STEPS, run_demo
    from brandtune.settings import Settings

    # Prefect keeps its local state beside brandtune's unless told otherwise; the first flow run of a process
    # starts a temporary API server, which can be slow on a busy machine.
    os.environ.setdefault("PREFECT_HOME", str(Settings.from_env().home / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no calls home from the local API
    result = run_demo(brand, steps or DEMO_STEPS, say=lambda text: console.print(text, highlight=False))
    settings = Settings.from_env()
    console.print("\n[bold green]done.[/] Open these:")
    console.print(f"  before/after: {result.before_after}")
    console.print(f"  campaign:     {result.gallery}")
    console.print(f"  evaluation:   {settings.home / 'evaluations' / brand} (report.html of the newest run)")
    console.print(f"  gate:         {result.gate}")
    console.print(f"  dataset:      {settings.datasets_dir / brand / result.dataset}")
    console.print(f"  ingest report: {settings.datasets_dir / brand / result.dataset / 'report.json'}")
    console.print(
        f"  MLflow:       training run {result.mlflow_run_id}, model {brand}-lora version {result.version}"
        f"{' (now @champion)' if result.promoted else ''}; browse with `make mlflow-ui`"
    )
    console.print("  Prefect:      the flow runs and their artifacts: `make ui`")


def _add_command_modules() -> None:
    """Commands that live in their own modules (each keeps its heavy imports inside the commands)."""
    from brandtune import cli_base, cli_jobs, cli_registry, cli_ui

    cli_base.add_commands(base_app)
    cli_registry.add_commands(app)
    cli_jobs.add_commands(app)
    cli_ui.add_commands(app)


_add_command_modules()


def run() -> None:
    """Console entry point: run the app, turning brandtune errors into one readable line."""
    try:
        app(standalone_mode=False)
    except BrandtuneError as exc:
        if os.environ.get("BRANDTUNE_DEBUG"):
            raise
        lines = str(exc).splitlines() or [type(exc).__name__]
        err_console.print(f"[bold red]error:[/] {lines[0]}", highlight=False)
        for line in lines[1:]:
            err_console.print(f"  {line}", highlight=False)
        raise SystemExit(2) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        err_console.print("aborted")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    run()
