"""Registry commands of the ``brandtune`` CLI: register, promote, rollback, models list, pull, mlflow-ui.

``brandtune.cli`` calls :func:`add_commands`. Commands only parse, call :mod:`brandtune.registry` and report;
mlflow, torch and diffusers are imported inside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from brandtune.errors import ConfigError

console = Console()

BrandArg = Annotated[str, typer.Argument(help="Brand slug; its registered model is <brand>-lora.")]


def _moves(moves: list) -> None:
    if not moves:
        console.print("nothing moved (already in place)")
    for move in moves:
        before = f"v{move.before}" if move.before else "(none)"
        console.print(f"[bold]@{move.alias}[/]: {before} -> v{move.after}")


def register_cmd(
    brand: Annotated[str, typer.Option("--brand", "-b", help="Brand slug.")],
    run: Annotated[str, typer.Option("--run", help="MLflow run id of the training run.")],
    flow_run_id: Annotated[str | None, typer.Option(help="Prefect flow run id to record.")] = None,
) -> None:
    """Register a training run's adapter as a new version of <brand>-lora, with alias @candidate."""
    from brandtune.registry import register

    version = register(brand, run, flow_run_id=flow_run_id)
    aliases = " ".join(f"@{a}" for a in version.aliases)
    console.print(f"[bold green]registered[/] {version.name} version {version.version} {aliases} (run {run})")
    console.print(f"  {version.description}", highlight=False)


def promote_cmd(
    brand: BrandArg,
    version: Annotated[int, typer.Option("--version", help="Version to make @champion.")],
) -> None:
    """Move @champion to a version; the old champion becomes @previous-champion."""
    from brandtune.registry import promote

    _moves(promote(brand, version))


def rollback_cmd(brand: BrandArg) -> None:
    """Swap @champion and @previous-champion (undo the last promotion)."""
    from brandtune.registry import rollback

    _moves(rollback(brand))


def models_list_cmd(brand: BrandArg) -> None:
    """List the versions of <brand>-lora: aliases, key metrics, dataset, base, date."""
    from brandtune.registry import list_versions

    table = Table("version", "aliases", "metrics", "dataset", "base", "created", title=f"{brand}-lora")
    for row in list_versions(brand):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(row.metrics.items())) or "-"
        images = row.tags.get("brandtune.dataset_images")
        dataset = row.tags.get("brandtune.dataset_fingerprint", "?") + (f" ({images} img)" if images else "")
        created = row.created.strftime("%Y-%m-%d %H:%M") if row.created else "?"
        table.add_row(
            row.version, " ".join(f"@{a}" for a in row.aliases), metrics, dataset, row.base_model, created
        )
    console.print(table)


def pull_cmd(
    brand: BrandArg,
    dest: Annotated[
        Path, typer.Option("--dest", help="Folder to write the adapter files and adapter.json to.")
    ],
    alias: Annotated[str | None, typer.Option("--alias", help="Alias to pull (e.g. champion).")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Version number to pull.")] = None,
) -> None:
    """Write a registered adapter (files + adapter.json) for generators that do not use Python brandtune."""
    from brandtune.registry import pull

    if (alias is None) == (version is None):
        raise ConfigError("Give exactly one of --alias NAME or --version N (e.g. --alias champion).")
    out = pull(brand, alias if alias is not None else version, dest)  # type: ignore[arg-type]
    console.print(
        f"[bold green]pulled[/] {brand}-lora {'@' + alias if alias else 'v' + str(version)} to {out}"
    )


def server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow server`` command line for the project's local store (sqlite + artifacts dir)."""
    from brandtune.settings import Settings

    settings = Settings.from_env()
    if not settings.tracking_uri.startswith("sqlite:"):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {settings.tracking_uri}: that is already a server. Unset it to serve the "
            "local sqlite store under BRANDTUNE_HOME, or open that server's URL in a browser."
        )
    Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    # Artifacts stay plain file:// locations (not proxied mlflow-artifacts:/ URIs), so runs made through this
    # server and runs made straight on the sqlite store (no MLFLOW_TRACKING_URI) can read each other's artifacts.
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", settings.artifacts_dir.as_uri(), "--no-serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def mlflow_ui_cmd(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start an MLflow server (UI + registry) on the project's local store; Ctrl-C stops it."""
    cmd = server_command(port)
    url = f"http://127.0.0.1:{port}"
    console.print(f"[bold green]MLflow[/] at {url}  (store {cmd[cmd.index('--backend-store-uri') + 1]})")
    console.print(f"  other shells: export MLFLOW_TRACKING_URI={url}   stop: Ctrl-C")
    from brandtune.services import stop_signals_interrupt

    proc = subprocess.Popen(
        cmd, start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    )
    try:
        with stop_signals_interrupt():  # also when started with SIGINT ignored (a shell's background job)
            code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        console.print("MLflow server stopped")
        return
    if code:
        raise typer.Exit(code)


def add_commands(app: typer.Typer) -> None:
    """Add the registry commands to the ``brandtune`` app (and a ``models`` group with ``list``)."""
    app.command("register")(register_cmd)
    app.command("promote")(promote_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("pull")(pull_cmd)
    app.command("mlflow-ui")(mlflow_ui_cmd)
    models_app = typer.Typer(help="Registered adapter models: list versions.", no_args_is_help=True)
    models_app.command("list")(models_list_cmd)
    app.add_typer(models_app, name="models")
