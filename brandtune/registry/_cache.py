"""Checking an adapter folder (cached, freshly downloaded or about to be pulled) against the registry's record.

A version's registry tags are the only trusted record: ``brandtune.adapter_sha256`` for the weights, and the
lineage tags (``brandtune.base_model``, ``brandtune.base_revision``, ...) for what ``brandtune.json`` says. The rest
of ``brandtune.json`` is checked against the provenance that training wrote into the weights' safetensors metadata
(which the hash covers), and every file its ``files`` list names is hashed. Nothing in a cache folder is trusted on
its own; the ``.brandtune-verified.json`` marker a verified entry carries only lets ``brandtune doctor`` check the
cache without a registry.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brandtune.doctor import Finding
from brandtune.errors import RegistryError
from brandtune.fsutil import atomic_write_json, sha256_file
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME
from brandtune.registry._versions import ADAPTER_SHA_TAG, TAG, RegisteredVersion, model_name
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter_weights"
#: Written into a cache entry once it verified: what it was verified against (for ``brandtune doctor``).
MARKER = ".brandtune-verified.json"
#: A staging or set-aside folder older than this was left by a process that died (a download takes seconds).
TEMP_STALE_S = 900.0
_MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one brandtune wrote


class CorruptAdapterError(RegistryError):
    """An adapter folder does not match the registry's record.

    Attributes:
        file: The file that does not match (or is missing).
        detail: What is wrong with it.
    """

    def __init__(self, file: Path, detail: str) -> None:
        super().__init__(f"{file}: {detail}")
        self.file = file
        self.detail = detail


@dataclass(frozen=True)
class Expected:
    """What a version's registry record says its adapter folder holds."""

    sha256: str
    tags: dict[str, str]

    @classmethod
    def of(cls, version: RegisteredVersion) -> Expected:
        sha = version.tags.get(ADAPTER_SHA_TAG)
        if not sha:
            raise RegistryError(
                f"{version.uri} has no {ADAPTER_SHA_TAG} tag, so its adapter cannot be verified; register it with "
                "`brandtune register` (which records the hash)."
            )
        return cls(sha, {k: v for k, v in version.tags.items() if k.startswith(TAG)})


def weights_metadata(weights: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header without loading tensors."""
    with weights.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CorruptAdapterError(weights, "is not a safetensors file (shorter than its header)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise CorruptAdapterError(weights, f"has an implausible safetensors header of {size} bytes")
        try:
            header = json.loads(handle.read(size))
        except ValueError as exc:
            raise CorruptAdapterError(weights, f"has an unreadable safetensors header ({exc})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _same(value: Any, recorded: str) -> bool:
    """Whether a ``brandtune.json`` value equals its safetensors-metadata spelling (strings as they are, the rest
    as JSON)."""
    if isinstance(value, str):
        return value == recorded
    try:
        return json.loads(recorded) == value
    except ValueError:
        return False


def _check_provenance(path: Path, info: dict[str, Any], expected: Expected, meta: dict[str, str]) -> None:
    """Each ``brandtune.json`` value against the registry tag of that name, else against the weights' metadata."""
    for key, value in info.items():
        if key == "files":
            continue
        tag = expected.tags.get(f"{TAG}{key}")
        if tag is not None:
            if (value or key != "git_sha") and str(
                value
            ) != tag:  # an empty git_sha is tagged as the registrar's
                raise CorruptAdapterError(path, f"says {key} = {value!r}, but the registry records {tag!r}")
        elif (recorded := meta.get(f"{TAG}{key}")) is not None and not _same(value, recorded):
            raise CorruptAdapterError(
                path, f"says {key} = {value!r}, but the adapter weights record {recorded!r}"
            )


def _check_listed(adapter: Path, files: dict[str, Any]) -> None:
    """Every other file ``brandtune.json`` lists (e.g. the kohya export), hashed."""
    for name, sha in files.items():
        if name == WEIGHTS_NAME:
            continue
        path = adapter / str(name)
        if "/" in str(name) or "\\" in str(name) or str(name).startswith("."):
            raise CorruptAdapterError(adapter / PROVENANCE_NAME, f"lists a file outside the folder: {name!r}")
        if not path.is_file():
            raise CorruptAdapterError(path, "is listed in brandtune.json but missing")
        if (got := sha256_file(path)) != sha:
            raise CorruptAdapterError(path, f"has sha256 {got}, but brandtune.json records {sha}")


def verify_adapter(folder: Path, expected: Expected) -> dict[str, Any]:
    """Check an MLflow adapter model folder (``adapter_weights/`` inside) against the registry's record.

    Returns:
        The verified ``brandtune.json``.

    Raises:
        CorruptAdapterError: a file is missing, its hash differs, or ``brandtune.json`` disagrees with the
            registry's tags or with the weights.
    """
    adapter = folder / ADAPTER_SUBDIR
    weights = adapter / WEIGHTS_NAME
    if not weights.is_file():
        raise CorruptAdapterError(weights, "is missing")
    if (got := sha256_file(weights)) != expected.sha256:
        raise CorruptAdapterError(weights, f"has sha256 {got}, but the registry records {expected.sha256}")
    prov = adapter / PROVENANCE_NAME
    try:
        info = json.loads(prov.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptAdapterError(prov, f"cannot be read as JSON ({exc})") from None
    if not isinstance(info, dict):
        raise CorruptAdapterError(prov, "is not a JSON object")
    files = info.get("files")
    if not isinstance(files, dict) or files.get(WEIGHTS_NAME) != expected.sha256:
        listed = files.get(WEIGHTS_NAME) if isinstance(files, dict) else None
        raise CorruptAdapterError(
            prov, f"lists {WEIGHTS_NAME} with sha256 {listed}, but the registry records {expected.sha256}"
        )
    _check_listed(adapter, files)
    _check_provenance(prov, info, expected, weights_metadata(weights))
    return info


def write_marker(folder: Path, version: RegisteredVersion, expected: Expected) -> None:
    """Record in a verified entry what it was verified against (read by :func:`check_cache` only)."""
    atomic_write_json(
        folder / MARKER,
        {
            "version": version.uri,
            "source": version.source,
            "sha256": expected.sha256,
            "tags": expected.tags,
            "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _marker_problem(entry: Path) -> str | None:
    """Why a cache entry is not a verified one (``None`` when it verifies against its marker)."""
    try:
        marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
        expected = Expected(str(marker["sha256"]), {str(k): str(v) for k, v in dict(marker["tags"]).items()})
    except FileNotFoundError:
        return "it was never verified (no verification record): it may be a download that was not checked"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its verification record {entry / MARKER} is unreadable ({exc})"
    try:
        verify_adapter(entry, expected)
    except CorruptAdapterError as exc:
        return f"it is corrupt: {exc}"
    return None


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".tmp-") or ".old-" in path.name


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def check_cache(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """``brandtune doctor``: unverified or corrupt adapter-cache entries and staging folders a dead process left.

    ``fix`` deletes them (a later fetch downloads and verifies the version again). Staging folders younger than
    :data:`TEMP_STALE_S` may belong to a download under way and are left alone.
    """
    root = settings.cache_dir / "adapters"
    names = [root / model_name(brand)] if brand else sorted(p for p in root.glob("*") if p.is_dir())
    findings: list[Finding] = []
    now = time.time()
    for version_dir in (v for name in names for v in sorted(name.glob("*")) if v.is_dir()):
        for entry in sorted(version_dir.iterdir()):
            if _is_temp(entry):
                if now - entry.stat().st_mtime < TEMP_STALE_S:
                    continue
                problem = "a download or repair that never finished left this temporary folder"
            elif entry.is_dir():
                problem = _marker_problem(entry)
                if problem is None:
                    continue
            else:
                continue
            if fix:
                _remove(entry)
            findings.append(
                Finding(
                    "adapter-cache", str(entry), problem, "delete it (fetched and verified again on use)", fix
                )
            )
    return findings
