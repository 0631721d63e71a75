"""The ``brandtune`` app: the command modules assembled into one typer app, and its console entry point.

Errors raised on purpose (:class:`~brandtune.errors.BrandtuneError`) are shown as one readable line; ``--debug``
shows the full traceback. Usage errors are one line plus a usage hint. Heavy libraries (torch, diffusers, mlflow)
are imported inside the commands that need them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from brandtune.cli import base, demo, doctor, evaluate, generate, ingest, registry, train, ui
from brandtune.cli._common import PROG, err_console, print_error
from brandtune.errors import BrandtuneError

app = typer.Typer(
    name="brandtune",
    help="Brand imagery pipeline: ingest product photos, LoRA-fine-tune, register, evaluate, generate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log INFO messages.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and DEBUG logs.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        os.environ["BRANDTUNE_DEBUG"] = "1"


# the order of `brandtune --help` (typer lists the groups, base and models, after the commands)
for module in (ingest, train, demo, base, registry, evaluate, generate, ui, doctor):
    module.add_commands(app)


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
        print_error(message)
        return exc.exit_code
    ctx = exc.ctx
    if ctx is None:  # raised by the option parser itself (e.g. a flag without its value): find the command
        try:
            ctx = parse_command_line(args, resilient=True)
        except typer.TyperException:
            print_error(message, f"usage: see {PROG} --help")
            return exc.exit_code
    usage = " ".join(ctx.get_usage().split()).removeprefix("Usage: ")
    if ctx.command.get_help_option(ctx) is not None:
        usage += f"   (see: {ctx.command_path} {ctx.help_option_names[0]})"
    print_error(message, f"usage: {usage}")
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
        print_error(lines[0], *lines[1:])
        raise SystemExit(2) from None
    except typer.Abort:
        err_console.print("aborted")
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors of typer's vendored click
        if os.environ.get("BRANDTUNE_DEBUG"):
            raise
        raise SystemExit(_show_typer_error(exc, args)) from None
    raise SystemExit(code if isinstance(code, int) else 0)
