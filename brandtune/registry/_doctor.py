"""The registry's ``brandtune doctor`` checks: half-finished registrations and alias pairs that disagree.

:func:`check_registrations` runs first (a version it completes can then carry an alias), :func:`check_aliases`
second. With ``fix=True`` each repair is one of the idempotent steps that ``register``, ``promote`` and ``rollback``
run themselves, under the same registry lock; what cannot be repaired safely (an alias that would have to move to a
version nobody chose) is explained with the command to run.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

from brandtune.doctor import Finding
from brandtune.errors import RegistryError
from brandtune.registry._aliases import INTENT_TAG, move_candidate, recover, registry_lock
from brandtune.registry._client import call, check_reachable, client, find
from brandtune.registry._register import complete_version
from brandtune.registry._versions import (
    CANDIDATE,
    CHAMPION,
    COMPLETE,
    COMPLETE_TAG,
    PREVIOUS,
    SOURCE_RUN_TAG,
    RegisteredVersion,
    canonical,
    model_name,
    registered_models,
    versions,
)
from brandtune.settings import Settings

#: A version still PENDING_REGISTRATION after this long belongs to a registration that died.
STALE_PENDING_S = 600.0


def _models(mlc: Any, brand: str | None, uri: str) -> list[str]:
    names = registered_models(mlc, uri)
    return names if brand is None else [n for n in names if n == model_name(brand)]


def _aliases(mlc: Any, name: str, uri: str) -> tuple[dict[str, str], dict[str, str]]:
    model = call(lambda: mlc.get_registered_model(name), uri=uri, what=f"read {name}")
    aliases = {a: str(v) for a, v in (getattr(model, "aliases", None) or {}).items()}
    return aliases, dict(getattr(model, "tags", None) or {})


def _delete(mlc: Any, name: str, number: str, uri: str) -> None:
    find(lambda: mlc.delete_model_version(name, number), uri=uri, what=f"delete {name}/{number}")


def check_registrations(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """Versions that are not READY, READY ones without ``brandtune.registration=complete``, and training runs
    with more than one version."""
    check_reachable(settings.tracking_uri)
    mlc, uri = client(settings), settings.tracking_uri
    found: list[Finding] = []
    for name in _models(mlc, brand, uri):
        with registry_lock(settings, name) if fix else contextlib.nullcontext():
            aliased = set(_aliases(mlc, name, uri)[0].values())
            rows = versions(mlc, name, uri)
            dups = _duplicates(mlc, name, rows, aliased, uri, fix)
            found += dups
            seen = {f.subject for f in dups}  # a duplicate is explained (and removed) once
            for row in rows:
                if f"{name} version {row.version}" not in seen and not row.complete:
                    found.append(_unfinished(mlc, row, aliased, settings, fix))
    return found


def _duplicates(
    mlc: Any, name: str, rows: list[RegisteredVersion], aliased: set[str], uri: str, fix: bool
) -> list[Finding]:
    by_run: dict[str, list[RegisteredVersion]] = defaultdict(list)
    for row in rows:
        by_run[row.tags.get(SOURCE_RUN_TAG) or row.run_id].append(row)
    found = []
    for run_id, group in by_run.items():
        keep = canonical(group, aliased) if len(group) > 1 else None
        for row in group if keep else []:
            if row.version == keep.version:
                continue
            fixable = row.version not in aliased
            if fix and fixable:
                _delete(mlc, name, row.version, uri)
            found.append(
                Finding(
                    "registration",
                    f"{name} version {row.version}",
                    f"duplicate version of training run {run_id} (v{keep.version} is the one kept)",
                    "delete it (no alias points at it)"
                    if fixable
                    else f"an alias points at it: promote v{keep.version} (or another version) first, then --fix",
                    fixed=fix and fixable,
                )
            )
    return found


def _unfinished(
    mlc: Any, row: RegisteredVersion, aliased: set[str], settings: Settings, fix: bool
) -> Finding:
    """One version that is not READY+complete: finish it, or delete it when it can never become READY."""
    subject = f"{row.name} version {row.version}"
    age = time.time() - row.created.timestamp() if row.created else 0.0
    dead = row.status == "FAILED_REGISTRATION" or (
        row.status == "PENDING_REGISTRATION" and age > STALE_PENDING_S
    )
    if row.status == "PENDING_REGISTRATION" and not dead:
        return Finding(
            "registration", subject, "registration in progress (PENDING)", "check again in a minute"
        )
    if dead:
        fixable = row.version not in aliased
        if fix and fixable:
            _delete(mlc, row.name, row.version, settings.tracking_uri)
        return Finding(
            "registration",
            subject,
            f"registration ended {row.status} ({age:.0f} s old)",
            "delete it; register its run again"
            if fixable
            else "move the alias that points at it, then --fix",
            fixed=fix and fixable,
        )
    problem = f"READY but not tagged {COMPLETE_TAG}={COMPLETE} (its registration was interrupted)"
    repair = f"finish the registration of run {row.run_id} (lineage tags, complete tag)"
    if not fix:
        return Finding("registration", subject, problem, repair)
    try:
        complete_version(mlc, row, settings)
    except RegistryError as exc:
        return Finding("registration", subject, problem, f"could not finish it: {exc}")
    return Finding("registration", subject, problem, repair, fixed=True)


def check_aliases(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """Interrupted alias moves, @champion/@previous-champion pairs that disagree, aliases on versions that are
    not complete, and a @candidate older than the newest complete version."""
    check_reachable(settings.tracking_uri)
    mlc, uri = client(settings), settings.tracking_uri
    found: list[Finding] = []
    for name in _models(mlc, brand, uri):
        with registry_lock(settings, name) if fix else contextlib.nullcontext():
            aliases, tags = _aliases(mlc, name, uri)
            if INTENT_TAG in tags:
                done = recover(mlc, name, uri, tags) if fix else None
                found.append(
                    Finding(
                        "aliases",
                        name,
                        "a promote or rollback was interrupted half-way (pending brandtune.alias_move intent)",
                        done.message
                        if done
                        else "finish it (or roll it back when its target version is gone)",
                        fixed=done is not None,
                    )
                )
                if done is None:
                    continue  # the pair is half-moved on purpose: finishing the intent is the repair
                aliases = _aliases(mlc, name, uri)[0]
            rows = {r.version: r for r in versions(mlc, name, uri)}
            found += _pair(mlc, name, aliases, uri, fix)
            found += _on_unfinished(mlc, name, aliases, rows, uri, fix)
    return found


def _pair(mlc: Any, name: str, aliases: dict[str, str], uri: str, fix: bool) -> list[Finding]:
    champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
    brand = name.removesuffix("-lora")
    if previous is not None and champion == previous:
        if fix:
            find(lambda: mlc.delete_registered_model_alias(name, PREVIOUS), uri=uri, what="delete alias")
        return [
            Finding(
                "aliases",
                name,
                f"@{CHAMPION} and @{PREVIOUS} both point at v{champion}",
                f"delete @{PREVIOUS} (there is nothing to roll back to)",
                fixed=fix,
            )
        ]
    if previous is not None and champion is None:
        return [
            Finding(
                "aliases",
                name,
                f"@{PREVIOUS} is v{previous} but there is no @{CHAMPION}",
                f"choose the champion: `brandtune promote {brand} --version {previous}` restores the last one",
            )
        ]
    return []


def _on_unfinished(
    mlc: Any, name: str, aliases: dict[str, str], rows: dict[str, RegisteredVersion], uri: str, fix: bool
) -> list[Finding]:
    found = []
    newest = next((r for r in rows.values() if r.complete), None)  # rows are newest first
    for alias, number in sorted(aliases.items()):
        row = rows.get(number)
        if row is not None and row.complete:
            continue
        state = "does not exist" if row is None else f"is not a complete registration ({row.status})"
        if alias == CANDIDATE:
            if fix:
                _move_candidate(mlc, name, newest, uri)
            target = f"v{newest.version}" if newest else "nothing (delete it)"
            found.append(
                Finding("aliases", f"{name}@{alias}", f"v{number} {state}", f"move it to {target}", fixed=fix)
            )
        elif alias == PREVIOUS:
            if fix:
                find(lambda: mlc.delete_registered_model_alias(name, PREVIOUS), uri=uri, what="delete alias")
            found.append(Finding("aliases", f"{name}@{alias}", f"v{number} {state}", "delete it", fixed=fix))
        else:
            found.append(
                Finding(
                    "aliases",
                    f"{name}@{alias}",
                    f"v{number} {state}",
                    f"promote a complete version: `brandtune promote {name.removesuffix('-lora')} --version N`",
                )
            )
    current = aliases.get(CANDIDATE)
    if (
        newest is not None
        and current in rows
        and rows[current].complete
        and int(current) < int(newest.version)
    ):
        if fix:
            move_candidate(mlc, name, uri, newest)
        found.append(
            Finding(
                "aliases",
                f"{name}@{CANDIDATE}",
                f"points at v{current} but v{newest.version} is the newest complete registration",
                f"move it to v{newest.version} (its registration stopped before this step)",
                fixed=fix,
            )
        )
    return found


def _move_candidate(mlc: Any, name: str, newest: RegisteredVersion | None, uri: str) -> None:
    if newest is None:
        find(lambda: mlc.delete_registered_model_alias(name, CANDIDATE), uri=uri, what="delete alias")
        return
    call(lambda: mlc.set_registered_model_alias(name, CANDIDATE, newest.version), uri=uri, what="set alias")
