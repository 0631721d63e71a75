"""What every config shares: the strict base model, the slug and colour types, YAML loading, error lines, and
:func:`derive_model`, which builds a UI parameter model out of a library config's own fields."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from brandtune.errors import ConfigError

#: A brand's slug (its folder under data/brands): lower-case letters, digits and dashes, at most 63 characters.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SLUG_RE = re.compile(SLUG_PATTERN)
HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

HexColour = Annotated[str, Field(pattern=HEX_RE.pattern, description="A colour as #rrggbb.")]

M = TypeVar("M", bound=BaseModel)


def slugify(text: str, fallback: str = "prompt") -> str:
    """``text`` as a folder-safe slug: lower-case letters, digits and dashes, at most 40 characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or fallback


#: The placeholders a prompt or caption template may use (filled in from brand.yaml).
PLACEHOLDERS = frozenset({"trigger", "subject"})


def check_placeholders(text: str) -> str:
    """``text`` when it uses only ``{trigger}`` and ``{subject}``.

    Raises:
        ValueError: another placeholder (one line naming them).
    """
    unknown = set(re.findall(r"{(\w*)}", text)) - PLACEHOLDERS
    if unknown:
        raise ValueError(
            f"{text!r} uses unknown placeholders {sorted(unknown)}; use {{trigger}}, {{subject}}"
        )
    return text


class StrictModel(BaseModel):
    """Base of every brandtune config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def derive_model(source: type[BaseModel], fields: Iterable[str], *, base: type[M]) -> type[M]:
    """A model whose ``fields`` are ``source``'s own: the same type, bounds, default and description.

    This is how a flow's parameter model (what the Prefect UI turns into a form) takes its knobs from the library
    config instead of declaring them again. Subclass the result to give it its name and docstring (the UI shows
    both), the knobs no library config has (declared once, there, after the copied ones) and its methods::

        class TrainingParams(derive_model(TrainConfig, ["rank", "learning_rate"], base=FlowParams)):
            # the docstring here, then the flow's own fields, then methods
            retries: int = Field(default=0, ge=0, le=5, description="Retry a failed training this many times.")

    Args:
        source: The library config the fields are copied from.
        fields: Names of ``source``'s fields, in the order the form shows them.
        base: The base class: its model config (e.g. ``extra="forbid"``) and anything shared.

    Raises:
        KeyError: a name is not a field of ``source``.
    """
    copied: dict[str, Any] = {}
    for field in fields:
        info = source.model_fields[field]
        copied[field] = (info.annotation, copy.deepcopy(info))
    return create_model(f"{source.__name__}Fields", __base__=base, __module__=base.__module__, **copied)


def field_type(source: type[BaseModel], name: str, *, optional: bool = False) -> Any:
    """``source``'s field ``name`` as a type for a function parameter: ``Annotated[type, *bounds]``.

    For a flow's own scalar parameters (a Prefect flow's signature is its form; its docstring gives the
    descriptions). ``optional``: also accept ``None`` (for "empty: the brand's value"); the default is the
    signature's.
    """
    info = source.model_fields[name]
    bounded = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return bounded | None if optional else bounded


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable line per problem: ``<source>: <field>: <message>``."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented fields)"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping of keys to values in a YAML config file (safe loading: plain data only).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def load_yaml_model(model: type[M], path: Path, overrides: dict[str, Any] | None = None) -> M:
    """Load ``model`` from a YAML file, then apply non-None ``overrides`` on top (:func:`job_config`).

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or does not validate.
    """
    return job_config(model, Path(path), {k: v for k, v in (overrides or {}).items() if v is not None})


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``top``; nested mappings (a sampler section, say) are merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping):
            value = _merge(dict(out[key]) if isinstance(out.get(key), Mapping) else {}, value)
        out[key] = value
    return out


def _nested(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Flags as a mapping: a dotted key (``sampler.num_inference_steps``) sets a nested field."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        *parents, leaf = key.split(".")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return out


def job_config(
    model: type[M],
    config_file: Path | None,
    flags: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
) -> M:
    """The one override path of every stage command: defaults, then a ``--config`` YAML file, then flags.

    Args:
        model: The job config class (e.g. ``TrainConfig``).
        config_file: The YAML file of ``--config``, or None.
        flags: The flags the user passed (``brandtune.cli._common.given``), as config keys; a dotted key
            (``sampler.num_inference_steps``) sets a nested field.
        defaults: Values under the file, above the model's own defaults (e.g. what brand.yaml implies).

    Raises:
        ConfigError: the file is missing or not a YAML mapping, or the result does not validate; one line per
            problem, naming the file or "flags" as where it came from.
    """
    data = _merge({}, defaults or {})
    if config_file is not None:
        data = _merge(data, read_yaml_mapping(Path(config_file)))
    data = _merge(data, _nested(flags))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, _source(exc, config_file, flags))) from exc


def _source(exc: ValidationError, config_file: Path | None, flags: Mapping[str, Any]) -> str:
    """Where the bad values came from: "flags", the file, or both."""
    if config_file is None:
        return "flags"
    set_by_flag = {tuple(key.split(".")) for key in flags}
    from_flags = [
        any(tuple(str(p) for p in item["loc"][: len(key)]) == key for key in set_by_flag)
        for item in exc.errors()
    ]
    if all(from_flags):
        return "flags"
    return str(config_file) if not any(from_flags) else f"{config_file} and flags"
