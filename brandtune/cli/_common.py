"""What every command of the ``brandtune`` CLI shares: the consoles, the error line, option types, and the one
path from defaults, a ``--config`` YAML file and flags to a validated job config.

Nothing here imports a command module or the app that assembles them: commands import this module, never the
reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")

PROG = "brandtune"

console = Console()
err_console = Console(stderr=True)

BrandOpt = Annotated[
    str, typer.Option("--brand", "-b", help="Brand slug (folder under data/brands) or brand.yaml.")
]
BrandArg = Annotated[str, typer.Argument(help="Brand slug; its registered model is <brand>-lora.")]


def print_error(message: str, *details: str) -> None:
    """``error: <message>`` on stderr, then indented detail lines; never wrapped, never read as rich markup."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    for line in details:
        err_console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def validated(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` as ``model``, turning validation errors into one ConfigError naming ``source``."""
    from pydantic import ValidationError

    from brandtune.config import ConfigError, format_validation_error

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def given(ctx: typer.Context, flags: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """The flags the user passed, keyed by the config field they set.

    Args:
        ctx: The command's context (it knows where each parameter's value came from).
        flags: CLI parameter name -> (config key, value). A dotted key (``sampler.num_inference_steps``) sets a
            field of a nested config.

    Returns:
        ``{config key: value}`` for the parameters given on the command line (or in their environment variable);
        a parameter left at its default is left out, so it cannot override a ``--config`` file.
    """
    out: dict[str, Any] = {}
    for name, (key, value) in flags.items():
        source = getattr(ctx.get_parameter_source(name), "name", None)
        if source not in (None, "DEFAULT", "DEFAULT_MAP"):
            out[key] = value
    return out
