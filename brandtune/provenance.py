"""Where an artifact came from: package version, git sha, flow run, the hash of a resolved config, and the names
of an adapter folder's files."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from brandtune.fsutil import canonical_json, sha256_bytes

#: An adapter folder's LoRA weights (diffusers format: what ``save_lora_weights`` writes, ``load_lora_weights`` reads).
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: An adapter folder's provenance: base model and revision, trigger, LoRA settings, dataset, config hash, versions.
PROVENANCE_NAME = "brandtune.json"


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


#: The environment variable Prefect sets in a flow run's process (and brandtune passes to ``accelerate launch``).
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def flow_run_id() -> str | None:
    """The Prefect flow run this process works for (env ``PREFECT__FLOW_RUN_ID``), or None outside a flow run."""
    return os.environ.get(FLOW_RUN_ENV) or None


def config_hash(config: Any, length: int = 16) -> str:
    """A short, stable hash of a config (pydantic model or plain JSON-able data).

    Args:
        config: A pydantic model (hashed as its JSON dump) or JSON-able data, spelled as :func:`canonical_json`.
        length: Hex digits kept: 16 for a training identity (the ``brandtune.config_hash`` registry tag), 12 for
            a built-in model's cache folder.
    """
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return sha256_bytes(canonical_json(data).encode())[:length]


def safetensors_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """``provenance`` as ``brandtune.*`` safetensors metadata (strings as they are, everything else as JSON), as
    every adapter file brandtune writes carries it."""
    return {f"brandtune.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in provenance.items()}
