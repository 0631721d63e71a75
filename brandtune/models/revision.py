"""Content revisions of local diffusers folders.

A folder's revision is ``"sha256:<hex>"`` over its sorted relative paths and the sha256 of each file, leaving out
hidden entries (brandtune's own marker and cache files start with a dot, and so does a hub cache's ``.cache``).
Two folders with the same files have the same revision wherever they live, so an exported copy of ``builtin:tiny``
resolves to the revision of the original.

Hashing a real SDXL folder reads ~7 GB, so the result is cached in a small JSON file together with a signature
of the files' paths, sizes and modification times; a changed file changes the signature and forces a rehash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from brandtune.fsutil import atomic_write_json

logger = logging.getLogger(__name__)

REVISION_FILE = ".brandtune-revision.json"
_CHUNK = 1 << 20


def content_files(root: Path) -> list[tuple[str, Path]]:
    """List the files that make up a folder's content, sorted by relative POSIX path.

    Symlinks are followed (hub snapshots are links into a blob store); hidden files and folders are left out.

    Args:
        root: The folder.

    Returns:
        ``(relative_posix_path, absolute_path)`` pairs.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def compute_revision(root: Path) -> str:
    """Hash a folder's content (no cache).

    Args:
        root: The folder.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    digest = hashlib.sha256()
    for rel, path in content_files(root):
        digest.update(f"{rel}\0{_file_sha256(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _signature(root: Path) -> str:
    digest = hashlib.sha256()
    for rel, path in content_files(root):
        stat = path.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_revision(root: Path, cache_file: Path) -> str:
    """Return a folder's revision, reusing ``cache_file`` while the folder's files are unchanged.

    Args:
        root: The folder.
        cache_file: Where the revision and the files' signature are kept.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    signature = _signature(root)
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if cached.get("signature") == signature and str(cached.get("revision", "")).startswith("sha256:"):
        return str(cached["revision"])
    revision = compute_revision(root)
    try:
        atomic_write_json(cache_file, {"revision": revision, "signature": signature, "folder": str(root)})
    except OSError as exc:  # a read-only model folder or cache: the revision is still right, just not kept
        logger.warning("could not cache the revision of %s in %s: %s", root, cache_file, exc)
    return revision
