"""Content revisions of local diffusers folders.

A folder's revision is ``"sha256:<hex>"`` over its sorted relative paths and the sha256 of each file, leaving out
hidden entries (brandtune's own marker and cache files start with a dot, and so does a hub cache's ``.cache``).
Two folders with the same files have the same revision wherever they live, so an exported copy of ``builtin:tiny``
resolves to the revision of the original.

Hashing a real SDXL folder reads ~7 GB, so the result is cached in a small JSON file together with each file's
sha256 and a signature of the files' paths, sizes and modification times; a changed file changes the signature and
forces a rehash. The cache is verified before it is used (same folder, same signature, and its revision is the hash
of the file hashes it lists) and written only from a hash taken while the files did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from brandtune.fsutil import atomic_write_json

logger = logging.getLogger(__name__)

REVISION_FILE = ".brandtune-revision.json"
_CHUNK = 1 << 20
_REVISION = re.compile(r"sha256:[0-9a-f]{64}")


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


def _digest(hashes: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for rel, sha in hashes:
        digest.update(f"{rel}\0{sha}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _file_hashes(root: Path) -> list[tuple[str, str]]:
    return [(rel, _file_sha256(path)) for rel, path in content_files(root)]


def compute_revision(root: Path) -> str:
    """Hash a folder's content (no cache).

    Args:
        root: The folder.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    return _digest(_file_hashes(root))


def _signature(root: Path) -> str:
    digest = hashlib.sha256()
    for rel, path in content_files(root):
        stat = path.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cached(root: Path, cache_file: Path, signature: str) -> str | None:
    """The revision ``cache_file`` holds for ``root`` if it is for this folder, these files (``signature``) and
    consistent (its revision is the hash of the per-file hashes it lists); ``None`` otherwise (a WARNING when the
    file exists but is unusable)."""
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("revision cache %s is unreadable (%s): hashing %s again", cache_file, exc, root)
        return None
    if isinstance(cached, dict) and "files" not in cached and "signature" in cached:
        logger.info("revision cache %s predates per-file hashes: hashing %s again", cache_file, root)
        return None
    try:
        revision, files = str(cached["revision"]), [(str(r), str(h)) for r, h in cached["files"]]
        if cached["signature"] != signature or cached["folder"] != str(root):
            return None  # the folder changed (or the cache is another folder's): rehash, no alarm
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning(
            "revision cache %s is not a revision record (%r): hashing %s again", cache_file, exc, root
        )
        return None
    if not _REVISION.fullmatch(revision) or _digest(files) != revision:
        logger.warning(
            "revision cache %s is inconsistent (its revision is not the hash of its file list): hashing %s again",
            cache_file,
            root,
        )
        return None
    return revision


def cached_revision(root: Path, cache_file: Path) -> str:
    """Return a folder's revision, reusing ``cache_file`` while the folder's files are unchanged.

    The cache is trusted only when it is consistent (:func:`_cached`). A new revision is published to it only when
    the folder's files did not change while they were hashed (same signature before and after), atomically.

    Args:
        root: The folder.
        cache_file: Where the revision, the per-file hashes and the files' signature are kept.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    signature = _signature(root)
    if (revision := _cached(root, cache_file, signature)) is not None:
        return revision
    for _ in range(3):
        files = _file_hashes(root)
        after = _signature(root)
        if after == signature:
            break
        signature = after  # a file changed while it was hashed: hash again
    else:
        logger.warning("the files of %s keep changing: its revision is not cached", root)
        return _digest(files)
    revision = _digest(files)
    record = {"revision": revision, "signature": signature, "folder": str(root), "files": files}
    try:
        atomic_write_json(cache_file, record)
    except OSError as exc:  # a read-only model folder or cache: the revision is still right, just not kept
        logger.warning("could not cache the revision of %s in %s: %s", root, cache_file, exc)
    return revision
