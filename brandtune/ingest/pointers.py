"""The per-brand shared paths of ingest: the ``LATEST`` pointer and the failure reports.

Several ingests of one brand may run at once (two shells, a Prefect flow and a user). They share two paths under
``<home>/datasets/<brand>/``, and neither is last-writer-wins:

``LATEST`` moves only forward. "Newer" means the ingest that *started* later: its :class:`Attempt` key is the wall
clock at the start of the ingest in nanoseconds, then the host and pid to break ties. An ingest that started first
but finishes last (a big upload) does not move ``LATEST`` back over a newer one; re-ingesting the photos of an
existing dataset is a newer request and moves ``LATEST`` to that dataset. The move happens under an exclusive
``flock`` on ``.pointers.lock`` (the kernel drops it when the holder dies, even by SIGKILL): ``LATEST.json`` (the
fingerprint and the attempt that set it) is the record, written atomically first; ``LATEST`` (the fingerprint
alone, for shells) is written from it after. A crash between the two leaves ``LATEST`` one step behind: readers go
by ``LATEST.json``, and the next ingest rewrites ``LATEST`` from it. Only complete datasets are ever named: the
pointer moves after the dataset folder is published.

Each failed ingest writes its own ``failed-report-<UTC time>-<pid>.json`` (never overwritten, so no report is lost)
and, under the same lock and the same "newer" rule, an atomic copy to ``failed-report.json``.

The lock assumes one host's filesystem (``flock`` over NFS is not reliable); ``LATEST`` is then still never torn,
since every write is an atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

LATEST = "LATEST"
LATEST_RECORD = "LATEST.json"
FAILED_REPORT = "failed-report.json"
LOCK = ".pointers.lock"


@dataclass(frozen=True)
class Attempt:
    """One ingest run: when it started (wall clock, ns), where, and which process. Later starts are newer."""

    started_ns: int
    host: str
    pid: int

    @classmethod
    def now(cls) -> Attempt:
        return cls(time.time_ns(), socket.gethostname(), os.getpid())

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.started_ns, self.host, self.pid)

    @property
    def stamp(self) -> str:
        """``20261207T143012.123456Z-4242``: sorts by start time, unique per process."""
        when = datetime.fromtimestamp(self.started_ns / 1e9, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{when}-{self.pid}"

    def as_dict(self) -> dict[str, Any]:
        started = datetime.fromtimestamp(self.started_ns / 1e9, UTC).isoformat(timespec="microseconds")
        return {"started_ns": self.started_ns, "started": started, "host": self.host, "pid": self.pid}

    @classmethod
    def from_dict(cls, data: Any) -> Attempt | None:
        """The attempt recorded in a pointer or report; ``None`` when absent or malformed (it counts as oldest)."""
        try:
            return cls(int(data["started_ns"]), str(data["host"]), int(data["pid"]))
        except (KeyError, TypeError, ValueError):
            return None


@contextlib.contextmanager
def pointers_lock(brand_root: Path) -> Iterator[None]:
    """Hold the brand's exclusive pointer lock (blocking); released on exit or when the process dies."""
    brand_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(brand_root / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_latest(brand_root: Path) -> str | None:
    """The fingerprint ``LATEST`` names: from ``LATEST.json``, else from the plain ``LATEST`` file, else None."""
    record = _read_json(brand_root / LATEST_RECORD)
    if record is not None and isinstance(record.get("fingerprint"), str) and record["fingerprint"]:
        return str(record["fingerprint"])
    try:
        text = (brand_root / LATEST).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def advance_latest(brand_root: Path, fingerprint: str, attempt: Attempt) -> bool:
    """Point ``LATEST`` at the complete dataset ``fingerprint`` unless a newer ingest already moved it.

    Returns:
        True if ``LATEST`` now names ``fingerprint`` by this call; False if a newer attempt holds it.
    """
    with pointers_lock(brand_root):
        record = _read_json(brand_root / LATEST_RECORD) or {}
        holder = Attempt.from_dict(record.get("attempt"))
        if holder is not None and holder.key >= attempt.key and isinstance(record.get("fingerprint"), str):
            current = str(record["fingerprint"])
            _write_plain(brand_root, current)  # repair a plain file that a crash left one step behind
            logger.info(
                "LATEST of %s stays %s: set by a newer ingest (started %s, pid %s) than this one (%s)",
                brand_root.name, current, record["attempt"].get("started"), holder.pid, fingerprint,
            )  # fmt: skip
            return False
        atomic_write_json(
            brand_root / LATEST_RECORD, {"fingerprint": fingerprint, "attempt": attempt.as_dict()}
        )
        fault_point("ingest.latest_between_files")
        _write_plain(brand_root, fingerprint)
        return True


def _write_plain(brand_root: Path, fingerprint: str) -> None:
    path = brand_root / LATEST
    try:
        if path.read_text(encoding="utf-8").strip() == fingerprint:
            return
    except OSError:
        pass
    atomic_write_text(path, fingerprint + "\n")


def write_failed_report(brand_root: Path, report: dict[str, Any], attempt: Attempt) -> Path:
    """Write this attempt's own failure report, then copy it to ``failed-report.json`` if no newer attempt did.

    Returns:
        The path of this attempt's own report (``failed-report-<stamp>.json``), which no other ingest overwrites.
    """
    data = {**report, "attempt": attempt.as_dict()}
    own = brand_root / f"failed-report-{attempt.stamp}.json"
    atomic_write_json(own, data)
    with pointers_lock(brand_root):
        shared = _read_json(brand_root / FAILED_REPORT) or {}
        holder = Attempt.from_dict(shared.get("attempt"))
        if holder is None or holder.key < attempt.key:
            atomic_write_json(brand_root / FAILED_REPORT, data)
    return own


STALE_STAGING_S = 24 * 3600  # an ingest's private staging folder this old belongs to an ingest that died


def check(settings: Any, *, brand: str | None = None, fix: bool = False) -> list[Any]:
    """``brandtune doctor``: each brand's LATEST names a complete dataset and agrees with its record; staging
    folders of killed ingests. ``fix`` rewrites a LATEST left behind by a crash and removes stale staging folders;
    a LATEST that names a missing dataset is reported only (re-run the ingest)."""
    import shutil

    from brandtune.doctor import Finding

    root = settings.datasets_dir
    brands = (
        [root / brand] if brand else sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    )
    findings: list[Finding] = []
    for brand_root in (b for b in brands if b.is_dir()):
        latest = read_latest(brand_root)
        if latest is not None and not (brand_root / latest / "manifest.json").is_file():
            findings.append(Finding(
                "dataset-pointer", str(brand_root / LATEST),
                f"LATEST names dataset {latest}, which is missing or incomplete",
                f"re-run `brandtune ingest --brand {brand_root.name}` to make a dataset and point LATEST at it",
            ))  # fmt: skip
        record = _read_json(brand_root / LATEST_RECORD)
        if record is not None and latest is not None:
            try:
                plain = (brand_root / LATEST).read_text(encoding="utf-8").strip()
            except OSError:
                plain = ""
            if plain != latest:
                if fix:
                    with pointers_lock(brand_root):
                        _write_plain(brand_root, read_latest(brand_root) or latest)
                findings.append(Finding(
                    "dataset-pointer", str(brand_root / LATEST),
                    f"LATEST says {plain or 'nothing'} but LATEST.json (the record) says {latest}: an ingest was "
                    "killed between the two writes",
                    "rewrite LATEST from LATEST.json", fixed=fix,
                ))  # fmt: skip
        for staging in brand_root.glob(".tmp-ingest-*"):
            age = time.time() - staging.stat().st_mtime
            if staging.is_dir() and age > STALE_STAGING_S:
                if fix:
                    shutil.rmtree(staging, ignore_errors=True)
                findings.append(Finding(
                    "dataset-staging", str(staging),
                    f"staging folder of an ingest that stopped {age / 3600:.0f} h ago",
                    "remove it (no dataset refers to it)", fixed=fix,
                ))  # fmt: skip
    return findings
