"""``brandtune train``: LoRA-fine-tune a brand's base model on its dataset, in a child process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brandtune.cli._common import BrandOpt, console, err_console, given
from brandtune.config import job_config


def add_commands(app: typer.Typer) -> None:
    """Add ``train`` to the ``brandtune`` app."""
    app.command("train")(train_cmd)


def train_cmd(
    ctx: typer.Context,
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
    from brandtune.config import ConfigError, TrainConfig
    from brandtune.settings import Settings
    from brandtune.training.launch import ProgressLines, launch
    from brandtune.training.plan import resolve_job
    from brandtune.training.unchanged import find_unchanged

    if export not in (None, "kohya"):
        raise ConfigError(f"--export {export!r}: the only export format is 'kohya'")
    flags = given(
        ctx,
        {
            "brand": ("brand", brand),
            "dataset": ("dataset", dataset),
            "base": ("base_model", base),
            "steps": ("max_train_steps", steps),
            "batch_size": ("train_batch_size", batch_size),
            "rank": ("rank", rank),
            "resolution": ("resolution", resolution),
            "learning_rate": ("learning_rate", learning_rate),
            "seed": ("seed", seed),
            "output": ("output_dir", output),
            "resume": ("resume", resume),
            "export": ("export_kohya", export is not None),
        },
    )
    cfg = job_config(TrainConfig, config, flags)
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
    console.print(f"[bold green]adapter[/] {result.adapter_dir}")
    console.print(f"  MLflow run: {result.mlflow_run_id}   steps: {result.steps}   loss: {result.final_loss}")
