"""Aliases as the release mechanism: ``@champion`` is what generators use, ``@previous-champion`` the way back."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from brandtune.errors import RegistryError
from brandtune.registry._client import call, check_reachable, client
from brandtune.registry._versions import (
    CHAMPION,
    PREVIOUS,
    RegisteredVersion,
    get_model,
    model_name,
    resolve,
    versions,
)
from brandtune.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AliasMove:
    """One alias change: ``alias`` went from version ``before`` (None: it did not exist) to ``after``."""

    alias: str
    before: str | None
    after: str


def _aliases(brand: str, settings: Settings | None) -> tuple[object, str, str, dict[str, str]]:
    settings = settings or Settings.from_env()
    check_reachable(settings.tracking_uri)
    mlc = client(settings)
    name = model_name(brand)
    model = get_model(mlc, name, settings.tracking_uri)
    return (
        mlc,
        name,
        settings.tracking_uri,
        {a: str(v) for a, v in (getattr(model, "aliases", None) or {}).items()},
    )


def promote(brand: str, version: int | str, *, settings: Settings | None = None) -> list[AliasMove]:
    """Point ``@champion`` at ``version`` and the previous champion at ``@previous-champion``.

    Returns:
        The aliases that moved (empty when ``version`` already is the champion).

    Raises:
        RegistryError: unknown brand model or version (the message lists what exists).
    """
    mlc, name, uri, aliases = _aliases(brand, settings)
    target = resolve(mlc, name, None, str(version), uri).version  # type: ignore[arg-type]
    current = aliases.get(CHAMPION)
    if current == target:
        logger.info("%s version %s already is @%s", name, target, CHAMPION)
        return []
    moves = []
    if current is not None:
        call(lambda: mlc.set_registered_model_alias(name, PREVIOUS, current), uri=uri, what="set alias")  # type: ignore[attr-defined]
        moves.append(AliasMove(PREVIOUS, aliases.get(PREVIOUS), current))
    call(lambda: mlc.set_registered_model_alias(name, CHAMPION, target), uri=uri, what="set alias")  # type: ignore[attr-defined]
    moves.append(AliasMove(CHAMPION, current, target))
    logger.info("%s: %s", name, ", ".join(f"@{m.alias} {m.before} -> {m.after}" for m in moves))
    return moves


def rollback(brand: str, *, settings: Settings | None = None) -> list[AliasMove]:
    """Swap ``@champion`` and ``@previous-champion`` (undo the last promotion).

    Raises:
        RegistryError: there is no ``@previous-champion`` (nothing to roll back to).
    """
    mlc, name, uri, aliases = _aliases(brand, settings)
    current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
    if previous is None or current is None:
        existing = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(
            f"Cannot roll back {name}: it has no @{PREVIOUS} and @{CHAMPION} pair (aliases: {existing}). "
            f"Promote a version instead: `brandtune promote {brand} --version N`."
        )
    call(lambda: mlc.set_registered_model_alias(name, CHAMPION, previous), uri=uri, what="set alias")  # type: ignore[attr-defined]
    call(lambda: mlc.set_registered_model_alias(name, PREVIOUS, current), uri=uri, what="set alias")  # type: ignore[attr-defined]
    moves = [AliasMove(CHAMPION, current, previous), AliasMove(PREVIOUS, previous, current)]
    logger.info("%s rolled back: @%s %s -> %s", name, CHAMPION, current, previous)
    return moves


def list_versions(brand: str, *, settings: Settings | None = None) -> list[RegisteredVersion]:
    """All versions of ``<brand>-lora``, newest first, with aliases, lineage tags and ``brandtune.metric.*``.

    Raises:
        RegistryError: the brand has no registered model (the message lists those that exist).
    """
    mlc, name, uri, aliases = _aliases(brand, settings)
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    rows = versions(mlc, name, uri)  # type: ignore[arg-type]
    # search results may not carry aliases on every store: take them from the registered model
    return [
        RegisteredVersion(**{**r.__dict__, "aliases": tuple(sorted(by_version.get(r.version, [])))})
        for r in rows
    ]


def set_version_tags(
    brand: str, version: int | str, tags: dict[str, str], *, settings: Settings | None = None
) -> None:
    """Set tags on one version of ``<brand>-lora`` (evaluation metrics, gate decisions), retrying transient errors."""
    mlc, name, uri, _ = _aliases(brand, settings)
    for key, value in tags.items():
        call(
            lambda k=key, v=value: mlc.set_model_version_tag(name, str(version), k, v),  # type: ignore[attr-defined]
            uri=uri,
            what=f"tag {name} version {version}",
        )


def tag_lineage(
    tags: dict[str, str],
    *,
    run_id: str | None = None,
    name: str | None = None,
    version: int | str | None = None,
    settings: Settings | None = None,
) -> str | None:
    """Tag an MLflow run and/or a model version with lineage (a Prefect flow run's id and URL), retrying
    transient errors.

    Args:
        tags: The tags, e.g. ``{"prefect.flow_run_id": ..., "prefect.flow_run_url": ...}``.
        run_id: The MLflow run to tag (training or evaluation); None: no run.
        name: Registered model of the version to tag (``<brand>-lora``); with ``version``.
        version: The version to tag; None: no version.
        settings: Tracking URI; read from the environment when omitted.

    Returns:
        The experiment id of ``run_id`` (for links into the MLflow UI), or None without a run.
    """
    settings = settings or Settings.from_env()
    mlc, uri = client(settings), settings.tracking_uri
    experiment_id = None
    if run_id:
        for key, value in tags.items():
            call(lambda k=key, v=value: mlc.set_tag(run_id, k, v), uri=uri, what=f"tag run {run_id}")
        run = call(lambda: mlc.get_run(run_id), uri=uri, what=f"read run {run_id}")
        experiment_id = run.info.experiment_id
    if name and version:
        set_version_tags(name, version, tags, settings=settings)
    return experiment_id
