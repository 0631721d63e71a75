"""One training at a time per run folder: a lock file holding who trains there.

``<run>/train.lock`` is created with ``O_CREAT | O_EXCL`` (atomic: of two processes, one creates it and the other
gets ``FileExistsError``) and holds the holder's pid, host, start time and invocation. It is removed when the
training ends. A lock whose process is gone (same host, no such pid, or a newer process that reused the pid) is
stale: it is taken over with a warning, under a short-lived second lock so that two processes cannot both take
over the same stale lock. A lock from another host cannot be checked from here and is always respected.

Exactly one process holds it: the launching process (:func:`brandtune.training.launch.launch`), which tells its
child through ``BRANDTUNE_RUN_LOCK_TOKEN``; or, when training was started without it, the main training process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError

if TYPE_CHECKING:
    from brandtune.doctor import Finding
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
TOKEN_ENV = "BRANDTUNE_RUN_LOCK_TOKEN"
#: A lock file may be empty for the instant between its creation and its first write; younger than this, an
#: unreadable lock counts as held.
_UNREADABLE_GRACE_S = 10.0
#: A takeover guard older than this was left by a process that died while taking over.
_GUARD_STALE_S = 30.0


class RunDirLockedError(TrainingError):
    """Another training holds the run folder."""


@dataclass(frozen=True)
class RunLock:
    """A held lock: release it when the training ends (or use :func:`run_lock`)."""

    path: Path
    token: str

    def release(self) -> None:
        """Remove the lock file if it is still this holder's (a takeover may have replaced it)."""
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, ``None`` when there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    inv = holder.get("invocation_id")
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" + (
        f" (invocation {inv})" if inv else ""
    )


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process named by a lock may still be training (always true for another host)."""
    import psutil

    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    # a process created after the lock was taken reused the pid of the one that took it
    return created <= float(holder.get("started_ts", 0)) + 1.0


def _create(path: Path, invocation_id: str | None) -> RunLock:
    token = uuid.uuid4().hex
    now = time.time()
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "started_ts": now,
        "invocation_id": invocation_id,
        "token": token,
    }
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(info) + "\n")
    return RunLock(path, token)


def _take_over(path: Path, stale: dict[str, Any] | None) -> None:
    """Remove ``path`` if it still holds ``stale``, under a guard so only one process does it."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink()
        return  # someone else is taking over; the caller tries again
    os.close(fd)
    try:
        if read_lock(path) == stale:
            who = _describe(stale) if stale else "an unreadable holder"
            logger.warning("taking over the stale lock %s of %s: that process is gone", path, who)
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _refusal(run_dir: Path, path: Path, holder: dict[str, Any] | None) -> RunDirLockedError:
    who = _describe(holder) if holder else "a process whose lock file cannot be read yet"
    return RunDirLockedError(
        f"run folder {run_dir} is in use by another training: {who}. Wait for it to end or stop it; if no "
        f"training runs there any more (e.g. its host is gone), delete {path}"
    )


def acquire(run_dir: Path, invocation_id: str | None = None, attempts: int = 5) -> RunLock:
    """Take the lock of ``run_dir`` now, or refuse at once naming the holder.

    Raises:
        RunDirLockedError: a live process (or one on another host) holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    holder: dict[str, Any] | None = None
    for _ in range(attempts):
        try:
            return _create(path, invocation_id)
        except FileExistsError:
            pass
        holder = read_lock(path)
        if holder is None:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime < _UNREADABLE_GRACE_S:
                    raise _refusal(run_dir, path, None)
                _take_over(path, None)
            continue
        if holder_alive(holder):
            raise _refusal(run_dir, path, holder)
        _take_over(path, holder)
        time.sleep(0.05)
    raise _refusal(run_dir, path, holder)


@contextlib.contextmanager
def run_lock(run_dir: Path, invocation_id: str | None = None) -> Iterator[RunLock]:
    """Hold the lock of ``run_dir`` for the ``with`` block."""
    lock = acquire(run_dir, invocation_id)
    try:
        yield lock
    finally:
        lock.release()


def held_for_me(run_dir: Path) -> bool:
    """Whether the launching process holds ``run_dir``'s lock on this process's behalf (``BRANDTUNE_RUN_LOCK_TOKEN``)."""
    token = os.environ.get(TOKEN_ENV)
    holder = read_lock(run_dir / LOCK_FILE)
    return bool(token) and holder is not None and holder.get("token") == token


def check_locks(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """Doctor check: ``train.lock`` files under ``<home>/runs`` whose holder is gone (killed, crashed, rebooted).

    A lock of a live process, or of another host, is not a finding (it may be training). With ``fix`` a stale lock
    is removed, only if it still names the same dead holder (so a training that took it over meanwhile keeps it).
    """
    from brandtune.doctor import Finding

    root = settings.home / "runs"
    pattern = f"{brand}/*/{LOCK_FILE}" if brand else f"*/*/{LOCK_FILE}"
    findings = []
    for path in sorted(root.glob(pattern)) if root.is_dir() else []:
        holder = read_lock(path)
        if holder is None:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime < _UNREADABLE_GRACE_S:
                    continue  # being written right now
            problem = "the lock file cannot be read (its writer died while creating it)"
        elif holder_alive(holder):
            continue
        else:
            problem = f"its holder, {_describe(holder)}, is gone: the training was killed or crashed"
        fixed = False
        if fix and read_lock(path) == holder:
            path.unlink(missing_ok=True)
            fixed = True
            logger.info("removed the stale lock %s", path)
        findings.append(
            Finding(
                check="lock",
                subject=str(path),
                problem=problem,
                repair="remove the lock file (the next training there would take it over anyway); resume the "
                "run with resume: latest if it left a checkpoint",
                fixed=fixed,
            )
        )
    return findings
