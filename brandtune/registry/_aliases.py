"""Aliases as the release mechanism: ``@champion`` is what generators use, ``@previous-champion`` the way back.

A promotion or a rollback moves two aliases, and MLflow moves one per call. To keep the pair consistent through a
crash, every move is written down first:

1. under a local lock (:func:`registry_lock`), any pending move left by a crashed process is finished first;
2. the caller's expectation is checked (compare-and-swap: ``promote(..., expected_champion=v3)`` refuses when
   ``@champion`` is no longer v3), and the target must be a complete registration;
3. an *intent*, the pair before and after plus a random token, is written as the registered model's tag
   ``brandtune.alias_move`` and read back (a different token means a second writer: this one stops);
4. ``@previous-champion`` then ``@champion`` are set (setting an alias is idempotent);
5. the intent is removed.

Any later promote, rollback or ``brandtune doctor --fix`` that finds an intent finishes it (rolls it forward), or,
when its target version no longer exists or is no longer complete, restores the pair it recorded before (rolls it
back). A crash at any point therefore leaves either the old pair, the new pair, or an intent that turns into one of
them on the next write.

Limits: the lock is a ``flock`` on a file under ``BRANDTUNE_HOME/locks``; it serialises writers on one host (and is
released by the kernel when a holder dies, so it is never stale). Writers on *different* hosts are not excluded by
it: the intent token read-back catches most overlaps, and the compare-and-swap refuses a promotion decided against a
champion that moved, but two hosts that read the same champion and write within the same few milliseconds can both
succeed, the later one winning. Run promotions from one host (the Prefect worker) when that matters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from brandtune.errors import RegistryError
from brandtune.faults import fault_point
from brandtune.registry._client import call, check_reachable, client, find
from brandtune.registry._versions import (
    CANDIDATE,
    CHAMPION,
    PREVIOUS,
    SUFFIX,
    RegisteredVersion,
    get_model,
    model_name,
    require_complete,
    resolve,
    versions,
)
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

INTENT_TAG = "brandtune.alias_move"
LOCK_WAIT_S = 120.0


class _Unchecked:
    def __repr__(self) -> str:
        return "ANY_CHAMPION"


#: ``promote(..., expected_champion=ANY_CHAMPION)``: move @champion whatever it points at now (a person's choice).
ANY_CHAMPION: Any = _Unchecked()


class ChampionMovedError(RegistryError):
    """``@champion`` is no longer the version a promotion was decided against."""


@dataclass(frozen=True)
class AliasMove:
    """One alias change: ``alias`` went from version ``before`` (None: it did not exist) to ``after``."""

    alias: str
    before: str | None
    after: str


@dataclass(frozen=True)
class Intent:
    """A pending two-alias move, stored as the registered model's ``brandtune.alias_move`` tag."""

    op: str  # "promote" | "rollback"
    champion_before: str | None
    previous_before: str | None
    champion: str | None
    previous: str | None
    token: str
    time: str

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, text: str) -> Intent | None:
        """The intent in a tag value, or None when the value is not one (a hand-edited or truncated tag)."""
        try:
            data = json.loads(text)
            return cls(**{k: (None if data[k] is None else str(data[k])) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None


@contextlib.contextmanager
def registry_lock(settings: Settings, name: str) -> Iterator[None]:
    """Hold the host-local write lock of registered model ``name`` (waits up to :data:`LOCK_WAIT_S`).

    Raises:
        RegistryError: another process held it for the whole wait (the message names the lock file).
    """
    digest = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:12]
    path = settings.home / "locks" / f"registry-{name}-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"Registry lock {path} was held by another brandtune process for {LOCK_WAIT_S:.0f} s: "
                        "wait for that promote/rollback/register to finish, then run this command again."
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(brand: str, settings: Settings | None) -> tuple[Any, str, str, Settings]:
    settings = settings or Settings.from_env()
    check_reachable(settings.tracking_uri)
    return client(settings), model_name(brand), settings.tracking_uri, settings


def _read(mlc: Any, name: str, uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """The model's aliases (alias -> version) and tags, fresh from the registry."""
    model = get_model(mlc, name, uri)
    aliases = {a: str(v) for a, v in (getattr(model, "aliases", None) or {}).items()}
    return aliases, dict(getattr(model, "tags", None) or {})


def _aliases(brand: str, settings: Settings | None) -> tuple[object, str, str, dict[str, str]]:
    mlc, name, uri, _ = _open(brand, settings)
    return mlc, name, uri, _read(mlc, name, uri)[0]


def _set_alias(mlc: Any, name: str, uri: str, alias: str, version: str | None) -> None:
    if version is not None:
        call(
            lambda: mlc.set_registered_model_alias(name, alias, version), uri=uri, what=f"set {name}@{alias}"
        )
    else:
        find(lambda: mlc.delete_registered_model_alias(name, alias), uri=uri, what=f"delete {name}@{alias}")


def _apply(mlc: Any, name: str, uri: str, intent: Intent) -> None:
    """Set the pair an intent records (each step idempotent), then remove the intent."""
    _set_alias(mlc, name, uri, PREVIOUS, intent.previous)
    fault_point("aliases.after_previous")
    _set_alias(mlc, name, uri, CHAMPION, intent.champion)
    fault_point("aliases.after_champion")
    find(lambda: mlc.delete_registered_model_tag(name, INTENT_TAG), uri=uri, what=f"clear {name}'s intent")


def _usable(mlc: Any, name: str, uri: str, version: str | None) -> bool:
    if version is None:
        return True
    found = find(lambda: mlc.get_model_version(name, version), uri=uri, what=f"read {name}/{version}")
    return found is not None and RegisteredVersion.from_mlflow(found).complete


def _label(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


@dataclass(frozen=True)
class Recovery:
    """What finishing a pending alias move did: the intent it applied and whether that was the move itself
    (``forward``) or the pair from before it."""

    message: str
    intent: Intent | None
    forward: bool


def recover(mlc: Any, name: str, uri: str, tags: dict[str, str]) -> Recovery | None:
    """Finish a pending alias move found in ``tags``: forward, or back when its target is gone or incomplete.

    Returns:
        What was done, or None when no move was pending.
    """
    text = tags.get(INTENT_TAG)
    if text is None:
        return None
    intent = Intent.from_tag(text)
    if intent is None:
        find(
            lambda: mlc.delete_registered_model_tag(name, INTENT_TAG), uri=uri, what=f"clear {name}'s intent"
        )
        return Recovery(
            f"removed an unreadable {INTENT_TAG} tag; the aliases were left as they are", None, False
        )
    if _usable(mlc, name, uri, intent.champion) and _usable(mlc, name, uri, intent.previous):
        _apply(mlc, name, uri, intent)
        _announce(name, intent.champion_before, intent.champion, f"finished an interrupted {intent.op}")
        return Recovery(
            f"finished the interrupted {intent.op}: @{CHAMPION} {_label(intent.champion)}, "
            f"@{PREVIOUS} {_label(intent.previous)}",
            intent,
            True,
        )
    back = Intent(
        intent.op, None, None, intent.champion_before, intent.previous_before, intent.token, intent.time
    )
    _apply(mlc, name, uri, back)
    return Recovery(
        f"rolled back the interrupted {intent.op} (its target is gone or incomplete): @{CHAMPION} "
        f"{_label(back.champion)}, @{PREVIOUS} {_label(back.previous)}",
        back,
        False,
    )


def _prepare(mlc: Any, name: str, uri: str) -> tuple[dict[str, str], Recovery | None]:
    """Read the aliases, finishing a pending move first (then reading again)."""
    aliases, tags = _read(mlc, name, uri)
    done = recover(mlc, name, uri, tags)
    if done is None:
        return aliases, None
    logger.warning("%s: %s", name, done.message)
    return _read(mlc, name, uri)[0], done


def _move(mlc: Any, name: str, uri: str, intent: Intent) -> None:
    """Write the intent, make sure it is ours, then move the pair (see the module docstring)."""
    call(
        lambda: mlc.set_registered_model_tag(name, INTENT_TAG, intent.to_tag()),
        uri=uri,
        what=f"record the alias move of {name}",
    )
    seen = Intent.from_tag(_read(mlc, name, uri)[1].get(INTENT_TAG, ""))
    if seen is None or seen.token != intent.token:
        raise RegistryError(
            f"Another process is moving the aliases of {name} at the same time (its intent replaced this one): "
            "nothing was moved by this command; check `brandtune models list` and run it again if still wanted."
        )
    fault_point("aliases.after_intent")
    _apply(mlc, name, uri, intent)


def _intent(op: str, aliases: dict[str, str], champion: str | None, previous: str | None) -> Intent:
    return Intent(
        op,
        aliases.get(CHAMPION),
        aliases.get(PREVIOUS),
        champion,
        previous,
        uuid.uuid4().hex,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


def promote(
    brand: str,
    version: int | str,
    *,
    expected_champion: int | str | None = ANY_CHAMPION,
    reason: str = "promote",
    settings: Settings | None = None,
) -> list[AliasMove]:
    """Point ``@champion`` at ``version`` and the previous champion at ``@previous-champion``.

    A move emits the Prefect event ``brandtune.champion.changed`` (:mod:`brandtune.events`) with ``reason``.

    Args:
        brand: Brand slug.
        version: The version to make champion (it must be a complete registration).
        expected_champion: The champion the decision was made against (None: there was none). When ``@champion``
            is another version now, nothing moves. Default: not checked (a person promoting by hand).
        reason: Why, for the event ("promote", "gate passed", "approved by ann").
        settings: Tracking URI and home; read from the environment when omitted.

    Returns:
        The aliases that moved (empty when ``version`` already is the champion).

    Raises:
        ChampionMovedError: ``@champion`` is no longer ``expected_champion``.
        RegistryError: unknown brand model or version (the message lists what exists), or a half-finished one.
    """
    mlc, name, uri, settings = _open(brand, settings)
    with registry_lock(settings, name):
        aliases, _ = _prepare(mlc, name, uri)  # a recovered promotion to `version` makes this a no-op
        target = resolve(mlc, name, None, str(version), uri).version
        current = aliases.get(CHAMPION)
        if current == target:
            logger.info("%s version %s already is @%s", name, target, CHAMPION)
            return []
        if expected_champion is not ANY_CHAMPION:
            expected = None if expected_champion is None else str(expected_champion)
            if expected != current:
                raise ChampionMovedError(
                    f"Not promoting {name} v{target}: champion moved from {_label(expected)} to "
                    f"{_label(current)} since this evaluation; re-run the evaluation "
                    f"(`brandtune evaluate --brand {brand}`)."
                )
        previous = current if current is not None else aliases.get(PREVIOUS)
        _move(mlc, name, uri, _intent("promote", aliases, target, previous))
    moves = []
    if current is not None:
        moves.append(AliasMove(PREVIOUS, aliases.get(PREVIOUS), current))
    moves.append(AliasMove(CHAMPION, current, target))
    logger.info("%s: %s", name, ", ".join(f"@{m.alias} {m.before} -> {m.after}" for m in moves))
    _announce(name, current, target, reason)
    return moves


def rollback(brand: str, *, reason: str = "rollback", settings: Settings | None = None) -> list[AliasMove]:
    """Swap ``@champion`` and ``@previous-champion`` (undo the last promotion); emits
    ``brandtune.champion.changed`` with ``reason``.

    Raises:
        RegistryError: there is no ``@previous-champion`` (nothing to roll back to), or it is half-registered.
    """
    mlc, name, uri, settings = _open(brand, settings)
    with registry_lock(settings, name):
        aliases, done = _prepare(mlc, name, uri)
        if done and done.forward and done.intent and done.intent.op == "rollback":
            # the interrupted rollback was this command's earlier run: finishing it is the rollback
            gone = done.intent
            return [
                AliasMove(CHAMPION, gone.champion_before, str(gone.champion)),
                AliasMove(PREVIOUS, gone.previous_before, str(gone.previous)),
            ]
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None or current is None or previous == current:
            existing = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(
                f"Cannot roll back {name}: it has no @{PREVIOUS} and @{CHAMPION} pair (aliases: {existing}). "
                f"Promote a version instead: `brandtune promote {brand} --version N`."
            )
        resolve(mlc, name, None, previous, uri)  # refuses a deleted or half-registered version
        _move(mlc, name, uri, _intent("rollback", aliases, previous, current))
    moves = [AliasMove(CHAMPION, current, previous), AliasMove(PREVIOUS, previous, current)]
    logger.info("%s rolled back: @%s %s -> %s", name, CHAMPION, current, previous)
    _announce(name, current, previous, reason)
    return moves


def _announce(name: str, before: str | None, after: str | None, reason: str) -> None:
    """Emit ``brandtune.champion.changed`` for a move of @champion. Best effort: the move has happened, and a
    notification that cannot be sent is logged, never an error of the promotion (the scheduled campaign is the
    backstop)."""
    if after is None or after == before:
        return
    from brandtune.events import champion_changed

    try:
        champion_changed(name.removesuffix(SUFFIX), before, after, reason)
    except Exception as exc:  # see the docstring: the alias move must not fail on its event
        logger.warning(
            "%s: @%s moved to v%s, but its event could not be sent: %s", name, CHAMPION, after, exc
        )


def move_candidate(mlc: Any, name: str, uri: str, version: RegisteredVersion) -> bool:
    """Point ``@candidate`` at ``version`` unless it points at a newer one; the caller holds the lock.

    Returns:
        Whether the alias moved.

    Raises:
        RegistryError: ``version`` is not a complete registration.
    """
    require_complete(version)
    current = _read(mlc, name, uri)[0].get(CANDIDATE)
    if current is not None and int(current) >= int(version.version):
        return False
    _set_alias(mlc, name, uri, CANDIDATE, version.version)
    return True


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
