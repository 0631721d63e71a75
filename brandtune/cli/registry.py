"""Registry commands: ``register``, ``promote``, ``rollback``, ``pull`` and the ``models`` group (``models list``).

Commands only parse, call :mod:`brandtune.registry` and report; mlflow, torch and diffusers are imported inside
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from brandtune.cli._common import BrandArg, console
from brandtune.errors import ConfigError


def add_commands(app: typer.Typer) -> None:
    """Add the registry commands to the ``brandtune`` app (and a ``models`` group with ``list``)."""
    app.command("register")(register_cmd)
    app.command("promote")(promote_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("pull")(pull_cmd)
    models_app = typer.Typer(help="Registered adapter models: list versions.", no_args_is_help=True)
    models_app.command("list")(models_list_cmd)
    app.add_typer(models_app, name="models")


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
    """Register a training run's adapter as a new version of <brand>-lora, with alias @candidate.

    Safe to run again: it finishes a registration of the same run that was interrupted."""
    from brandtune.registry import register

    version = register(brand, run, flow_run_id=flow_run_id)
    aliases = " ".join(f"@{a}" for a in version.aliases)
    console.print(f"[bold green]registered[/] {version.name} version {version.version} {aliases} (run {run})")
    console.print(f"  {version.description}", highlight=False)


def promote_cmd(
    brand: BrandArg,
    version: Annotated[int, typer.Option("--version", help="Version to make @champion.")],
    expect_champion: Annotated[
        str | None,
        typer.Option(
            "--expect-champion",
            help="Refuse unless @champion is this version now ('none': there is no champion); use the one you "
            "compared against.",
        ),
    ] = None,
) -> None:
    """Move @champion to a version; the old champion becomes @previous-champion."""
    from brandtune.registry import ANY_CHAMPION, promote

    expected: object = ANY_CHAMPION
    if expect_champion is not None:
        text = expect_champion.strip().lstrip("v").lower()
        if text != "none" and not text.isdigit():
            raise ConfigError(
                f"--expect-champion {expect_champion!r} is not a version: give a number (e.g. 3) or 'none'."
            )
        expected = None if text == "none" else text
    _moves(promote(brand, version, expected_champion=expected))


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
        number = row.version if row.complete else f"{row.version} (half-registered: brandtune doctor)"
        table.add_row(
            number, " ".join(f"@{a}" for a in row.aliases), metrics, dataset, row.base_model, created
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
