"""``brandtune doctor``: find state that a crash, a kill or a second writer left behind, explain it, repair it.

Each stage owns a check: a function ``check(settings, *, brand, fix) -> list[Finding]`` in its own module, listed
in :data:`CHECKS` as ``"module:function"`` (imported only when the doctor runs). A check reports what it found
whether or not it repaired it; with ``fix=True`` it repairs what can be repaired safely and says so in
``Finding.fixed``. A check never raises for the state it inspects (that state is the finding); it raises only
for its own failures, such as an unreachable tracking server.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from brandtune.settings import Settings

logger = logging.getLogger(__name__)

#: The checks, in the order they run. Each is ``"module:function"``.
CHECKS: tuple[str, ...] = (
    "brandtune.registry._doctor:check_registrations",
    "brandtune.registry._doctor:check_aliases",
    "brandtune.ingest.pointers:check",
    "brandtune.training.lock:check_locks",
    "brandtune.training.data:check_latent_cache",  # truncated latent-cache files, dead writes
    "brandtune.registry._cache:check_cache",  # unverified/corrupt adapter-cache entries, dead downloads
    "brandtune.generation_manifest:check",
    "brandtune.forwarder:check",
)


@dataclass(frozen=True)
class Finding:
    """One problem the doctor found.

    Attributes:
        check: Short name of the check ("registration", "aliases", "lock", "adapter-cache", ...).
        subject: What is affected, as a user names it ("acme-lora version 3", "/path/to/run/train.lock").
        problem: What is wrong, one sentence.
        repair: What ``--fix`` does (or, when it cannot repair it, what the user should do), one sentence.
        fixed: Whether this run repaired it.
    """

    check: str
    subject: str
    problem: str
    repair: str
    fixed: bool = False


Check = Callable[..., list[Finding]]


def _load(spec: str) -> Check:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def examine(
    settings: Settings | None = None, *, brand: str | None = None, fix: bool = False
) -> list[Finding]:
    """Run every check (for one brand, or all) and return what they found, repaired or not."""
    settings = settings or Settings.from_env()
    findings: list[Finding] = []
    for spec in CHECKS:
        found = _load(spec)(settings, brand=brand, fix=fix)
        logger.info("%s: %d finding(s)", spec, len(found))
        findings.extend(found)
    return findings
