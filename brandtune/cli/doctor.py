"""``brandtune doctor``: find half-finished state left by a crash or a second writer, explain it, repair it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from brandtune.cli._common import console


def add_commands(app: typer.Typer) -> None:
    """Add ``doctor`` to the ``brandtune`` app."""
    app.command("doctor")(doctor_cmd)


def doctor_cmd(
    brand: Annotated[
        str | None, typer.Option("--brand", "-b", help="Only this brand (default: all).")
    ] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired safely.")] = False,
) -> None:
    """Check the registry (and every stage's state) for half-finished work; --fix repairs it. Exit 1 while a
    finding remains unrepaired."""
    from brandtune.doctor import examine

    findings = examine(brand=brand, fix=fix)
    if not findings:
        console.print("[bold green]doctor[/]: nothing to repair")
        return
    table = Table("check", "subject", "problem", "repair", "fixed", title="brandtune doctor")
    for f in findings:
        table.add_row(f.check, f.subject, f.problem, f.repair, "yes" if f.fixed else "no")
    console.print(table)
    left = sum(not f.fixed for f in findings)
    if left:
        hint = "" if fix else " (run `brandtune doctor --fix` to repair)"
        console.print(f"[bold red]{left} finding(s) not repaired[/]{hint}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[bold green]repaired {len(findings)} finding(s)[/]")
