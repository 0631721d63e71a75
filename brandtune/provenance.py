"""Where an artifact came from: package version, git sha, and the hash of a resolved config."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from brandtune.fsutil import canonical_json, sha256_bytes


@functools.cache
def brandtune_version() -> str:
    try:
        return metadata.version("brandtune")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


@functools.cache
def git_sha(repo: Path | None = None) -> str:
    """The commit of the brandtune source tree (with ``-dirty`` when it has local changes), or ``unknown``."""
    where = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def config_hash(config: Any) -> str:
    """A short, stable hash of a config (pydantic model or plain JSON-able data)."""
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return sha256_bytes(canonical_json(data).encode())[:16]
