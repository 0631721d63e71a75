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

PROG = "brandtune"

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
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: the base's).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per process per step (default: the base's).")
    ] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Training resolution in px.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: the base's).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run folder (default: a new one under BRANDTUNE_HOME/runs).")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="latest|PATH",
            help="Continue a training: 'latest' (the newest unfinished run of this config) or a checkpoint or "
            "run folder.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Train even when a registered version has exactly this dataset and config."
        ),
    ] = False,
    export: Annotated[str | None, typer.Option(help="'kohya': also write a kohya-format LoRA.")] = None,
    num_processes: Annotated[int, typer.Option(help="Processes (accelerate launch; DDP).")] = 1,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="accelerate config file (multi-GPU/FSDP).")
    ] = None,
) -> None:
    """LoRA-fine-tune the brand's base model on its dataset (runs as a child process).

    Settings left out take the base model's recommendation. When a registered version was trained on exactly
    this dataset and config, nothing is trained unless --force.
    """
    from brandtune.config import ConfigError, load_yaml_model
    from brandtune.settings import Settings
    from brandtune.training import TrainConfig
    from brandtune.training.launch import ProgressLines, launch
    from brandtune.training.plan import resolve_job
    from brandtune.training.unchanged import find_unchanged

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
    settings = Settings.from_env()
    job = resolve_job(cfg, settings)  # cheap: no weights; the child trains exactly this
    if not force and cfg.resume is None and (unchanged := find_unchanged(job, settings)) is not None:
        console.print(unchanged.message("--force"), highlight=False)
        return
    result = launch(
        cfg,
        num_processes=num_processes,
        accelerate_config=accelerate_config,
        on_line=ProgressLines(
            lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True), every=2.0
        ),
        settings=settings,
        job=job,
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
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: what the base model recommends).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Train a new version even when nothing changed since the last one."),
    ] = False,
) -> None:
    """Run the whole pipeline on the built-in sample brand and print where to look."""
    from brandtune.demo import run_demo
    from brandtune.settings import Settings

    # Prefect keeps its local state beside brandtune's unless told otherwise; the first flow run of a process
    # starts a temporary API server, which can be slow on a busy machine.
    os.environ.setdefault("PREFECT_HOME", str(Settings.from_env().home / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no calls home from the local API
    result = run_demo(brand, steps, say=lambda text: console.print(text, highlight=False), force=force)
    settings = Settings.from_env()
    console.print("\n[bold green]done.[/] Open these:")
    console.print(f"  before/after: {result.before_after}")
    console.print(f"  campaign:     {result.gallery}")
    console.print(f"  evaluation:   {settings.home / 'evaluations' / brand} (report.html of the newest run)")
    console.print(f"  gate:         {result.gate}", highlight=False)
    if result.gate_explanation:
        console.print(f"                {result.gate_explanation}", highlight=False)
    console.print(f"  dataset:      {settings.datasets_dir / brand / result.dataset}")
    console.print(f"  ingest report: {settings.datasets_dir / brand / result.dataset / 'report.json'}")
    if result.trained:
        state = " (now @champion)" if result.promoted else ""
    else:
        state = " (unchanged: nothing trained; `brandtune demo --force` trains a new version)"
    console.print(
        f"  MLflow:       training run {result.mlflow_run_id}, model {brand}-lora version {result.version}"
        f"{state}; browse with `make mlflow-ui`"
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


def _print_error(message: str, *details: str) -> None:
    """``error: <message>`` on stderr, then indented detail lines; never wrapped, never read as rich markup."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    for line in details:
        err_console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def parse_command_line(args: list[str], *, resilient: bool = False) -> typer.Context:
    """Parse ``args`` (without the program name) down the sub-command chain, running nothing; return the
    innermost command's context (its ``params`` hold the parsed values).

    Raises:
        typer.TyperException: a usage error (typer's vendored click), unless ``resilient``.
    """
    from typer.main import get_command

    ctx = get_command(app).make_context(PROG, list(args), resilient_parsing=resilient)
    while hasattr(ctx.command, "resolve_command"):  # a group: find and parse its sub-command
        rest = [*ctx._protected_args, *ctx.args]  # where typer's group keeps the sub-command and its args
        if not rest:
            break
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        if command is None or name is None:
            break
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=resilient)
    return ctx


def _show_typer_error(exc: typer.TyperException, args: list[str]) -> int:
    """Show a parsing error of typer's vendored click in one line plus a usage hint; return the exit code.

    typer 0.29 vendors click as ``typer._click``: its errors derive from ``typer.TyperException`` and are not
    ``click.ClickException`` instances. Only the private module names the usage-error classes, hence the pin of
    typer's range in pyproject.toml.
    """
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    if isinstance(exc, NoArgsIsHelpError):  # bare `brandtune` / `brandtune models`: the help is the message
        if exc.format_message().strip():  # plain-text help (the rich help is printed when it is built)
            err_console.print(exc.format_message(), markup=False, highlight=False)
        return exc.exit_code
    message = " ".join(exc.format_message().split())
    if not isinstance(exc, UsageError):
        _print_error(message)
        return exc.exit_code
    ctx = exc.ctx
    if ctx is None:  # raised by the option parser itself (e.g. a flag without its value): find the command
        try:
            ctx = parse_command_line(args, resilient=True)
        except typer.TyperException:
            _print_error(message, f"usage: see {PROG} --help")
            return exc.exit_code
    usage = " ".join(ctx.get_usage().split()).removeprefix("Usage: ")
    if ctx.command.get_help_option(ctx) is not None:
        usage += f"   (see: {ctx.command_path} {ctx.help_option_names[0]})"
    _print_error(message, f"usage: {usage}")
    return exc.exit_code


def run(args: list[str] | None = None) -> None:
    """Console entry point: run the app, showing usage and brandtune errors as one readable line.

    Args:
        args: The command line without the program name (default: ``sys.argv[1:]``).

    Exit codes: 0 success, 2 a usage error (unknown option, missing or bad value) or a
    :class:`~brandtune.errors.BrandtuneError`, 130 interrupted; ``--debug`` shows the full traceback instead.
    """
    args = sys.argv[1:] if args is None else list(args)
    try:
        code = app(args=args, prog_name=PROG, standalone_mode=False)  # a typer.Exit's code (--help: 0)
    except BrandtuneError as exc:
        if os.environ.get("BRANDTUNE_DEBUG"):
            raise
        lines = str(exc).splitlines() or [type(exc).__name__]
        _print_error(lines[0], *lines[1:])
        raise SystemExit(2) from None
    except typer.Abort:
        err_console.print("aborted")
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors of typer's vendored click
        if os.environ.get("BRANDTUNE_DEBUG"):
            raise
        raise SystemExit(_show_typer_error(exc, args)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
