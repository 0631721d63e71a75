"""Finding the photos of an ingest: folders, zip archives and file lists, with their captions.

A zip archive is untrusted input. It is unpacked into a private folder entry by entry; an entry whose name is
absolute, climbs out with ``..``, or is a symbolic link is refused and listed in the report: nothing is ever written
outside that folder. Bounds keep a hostile archive (a zip bomb, millions of entries) to bounded time, memory and
disk, and each refused entry is listed with its reason code in ``report.json``:

- the central directory is read only when it is at most :data:`MAX_CENTRAL_DIRECTORY_BYTES` (else the archive is
  refused as a whole, before Python's zipfile builds its entry list);
- the first :data:`MAX_ARCHIVE_MEMBERS` files are examined; the rest are one ``too_many_archive_entries`` line with
  their count;
- an entry over :data:`MAX_MEMBER_BYTES` unpacked (``archive_entry_too_large``), one that would bring the bytes
  unpacked so far over :data:`MAX_ARCHIVE_BYTES` (``archive_total_too_large``), and one that compresses better than
  :data:`MAX_COMPRESSION_RATIO` to 1 (``suspicious_compression_ratio``, a zip bomb) are refused unread;
- an archive inside the archive is refused as ``nested_archive`` (by its name, or by its first bytes once unpacked)
  and never recursed into;
- an encrypted entry, an unsupported compression method and a corrupt entry (bad CRC, truncated) are refused as
  ``encrypted_archive_entry``, ``unsupported_archive_entry`` and ``corrupt_archive_entry``.

No entry ever writes more bytes than its header declares, so the bounds judged from headers hold on disk.

Mask files are never photos: they are attached to the photo they belong to (in folders and archives alike). Three
conventions are read, the first found wins: ``<name>.mask.png`` beside ``<name>.<ext>`` (brandtune's own),
``<name>-masklabel.png`` (OneTrainer), and ``mask/<name>.<any image ext>`` in a ``mask`` folder beside the photos
(kohya). A mask file with no photo of that name is reported (``mask_orphan``), and so is a second mask file of a
photo (``mask_ignored``).
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from brandtune.errors import IngestError
from brandtune.ingest.images import MAX_PHOTO_BYTES

logger = logging.getLogger(__name__)

# Files that live beside photos but are never photos themselves.
SIDECAR_SUFFIXES = {".txt", ".caption", ".json", ".jsonl", ".yaml", ".yml", ".md"}
CAPTIONS_FILE = "captions.jsonl"
# Mask-file conventions, in the order they win: (how the name ends, its convention's name).
MASK_SUFFIXES = ((".mask.png", "brandtune"), ("-masklabel.png", "onetrainer"))
KOHYA_MASK_DIR = "mask"
MAX_ARCHIVE_BYTES = 8 << 30  # bytes unpacked from one archive; entries past this are refused one by one
MAX_ARCHIVE_MEMBERS = 10_000  # files examined in one archive; the rest are listed as one rejection
MAX_MEMBER_BYTES = MAX_PHOTO_BYTES  # a member larger than a photo may be is refused unpacked
MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20  # ~1M entries: zipfile keeps one object per entry in memory
MAX_COMPRESSION_RATIO = 200  # photos compress little (PNG/JPEG ~1:1, flat BMP/TIFF ~50:1); bombs ~1000:1
MAX_CAPTION_BYTES = 64 << 10  # a sidecar caption longer than this is not a caption: refused, template used
MAX_CAPTIONS_FILE_BYTES = 64 << 20  # captions.jsonl: about 100,000 long captions
RATIO_CHECK_ABOVE = 1 << 20  # tiny entries may compress well without harm: judge the ratio above 1 MiB only
# Archives are never unpacked inside an archive: by name, and by their first bytes once unpacked.
ARCHIVE_SUFFIXES = {
    ".zip",
    ".jar",
    ".7z",
    ".rar",
    ".tar",
    ".tgz",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".lz",
    ".cab",
}
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ")
# What Python's zipfile can decompress; other methods (e.g. deflate64, PPMd) are refused entry by entry.
READABLE_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


@dataclass(frozen=True)
class Candidate:
    """One file that may be a photo."""

    path: Path  # where to read it now (inside the unpack folder for archives)
    source: str  # how the user knows it: a path, or "archive.zip!inner/name.jpg"
    caption: str | None = None  # from a sidecar .txt or captions.jsonl, if any
    caption_source: str = "template"
    mask: Path | None = None  # a mask file beside the photo, if any
    mask_source: str | None = None  # how the user knows the mask file


@dataclass
class SourceScan:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # unsafe archive entries, missing files


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link inside the archive (not followed)"
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path inside the archive"
    if ".." in posix.parts:
        return "path climbs out of the archive with '..'"
    return None


def _central_directory(archive: Path) -> tuple[int, int]:
    """(entries, bytes) of the archive's central directory, from its end record, without reading the directory.

    Raises:
        IngestError: the file has no end record (not a zip archive).
    """
    try:
        with open(archive, "rb") as handle:
            end = zipfile._EndRecData(handle)  # the stdlib's own reader of the end record (zip64 included)
    except OSError as exc:
        raise IngestError(f"{archive}: cannot be read ({exc}); check the path and its permissions") from exc
    if end is None:
        raise IngestError(
            f"{archive}: not a readable zip archive (no end record); pass a folder or a valid .zip"
        )
    return int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])


def _open_zip(archive: Path) -> zipfile.ZipFile:
    """Open ``archive`` once its central directory is known to be small enough to hold in memory."""
    entries, size = _central_directory(archive)
    if size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise IngestError(
            f"{archive}: its directory lists {entries:,} entries ({size / 2**20:.0f} MiB), over the "
            f"{MAX_CENTRAL_DIRECTORY_BYTES / 2**20:g} MiB limit; split it into archives of at most "
            f"{MAX_ARCHIVE_MEMBERS:,} photos"
        )
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(
            f"{archive}: not a readable zip archive ({exc}); pass a folder or a valid .zip"
        ) from exc


def unpack_zip(archive: Path, dest: Path) -> tuple[Path, list[dict[str, str]]]:
    """Unpack the regular files of ``archive`` under ``dest``, refusing unsafe or unreadable entries one by one.

    The bounds of the module docstring apply: at most :data:`MAX_ARCHIVE_MEMBERS` files are examined (the rest
    are one rejection with their count), each and all of them within their size bounds, no zip bomb, no nested
    archive. Every examined entry that is refused is listed with its reason; the others are unpacked.

    Returns:
        The folder holding the unpacked files, and one report entry per refused archive entry.

    Raises:
        IngestError: the archive cannot be read at all, or its directory is over the size bound.
    """
    rejected: list[dict[str, str]] = []
    with _open_zip(archive) as zf:
        root = dest.resolve()
        root.mkdir(parents=True, exist_ok=True)
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            rejected.append(_refused(archive, f"{len(infos) - MAX_ARCHIVE_MEMBERS} entries", "too_many_archive_entries",
                                     f"the archive holds {len(infos):,} files; only the first "
                                     f"{MAX_ARCHIVE_MEMBERS:,} are read: split it"))  # fmt: skip
        del infos[MAX_ARCHIVE_MEMBERS:]
        unpacked = 0
        for info in infos:
            kind, reason = _entry_problem(info, root)
            if reason is None and unpacked + info.file_size > MAX_ARCHIVE_BYTES:
                kind, reason = (
                    "archive_total_too_large",
                    (
                        f"the archive's entries before it already unpack to {unpacked / 2**20:.0f} MiB; with it they "
                        f"would pass the {MAX_ARCHIVE_BYTES >> 20} MiB limit per archive: split the archive"
                    ),
                )
            if reason is None:
                kind, reason = _extract(zf, info, root / info.filename)
            if reason is None:
                unpacked += info.file_size
            else:
                rejected.append(_refused(archive, info.filename, kind, reason))
    return root, rejected


def _refused(archive: Path, name: str, kind: str, reason: str) -> dict[str, str]:
    label = f"{archive}!{name}"
    logger.warning("%s: refused: %s", label, reason)
    return {"source": label, "reason": kind, "detail": reason}


def _entry_problem(info: zipfile.ZipInfo, root: Path) -> tuple[str, str | None]:
    """Why an archive entry is not unpacked at all, judged from its header: (reason code, sentence) or no sentence."""
    reason = _unsafe_reason(info)
    if reason is None and not (root / info.filename).resolve().is_relative_to(root):
        reason = "path resolves outside the archive's folder"
    if reason is not None:
        return "unsafe_archive_entry", reason
    if PurePosixPath(info.filename).suffix.lower() in ARCHIVE_SUFFIXES:
        return (
            "nested_archive",
            "an archive inside the archive is not unpacked; unpack it and pass its photos",
        )
    if info.flag_bits & 0x1:
        return "encrypted_archive_entry", "the entry is encrypted; unpack it yourself and pass the folder"
    if info.compress_type not in READABLE_COMPRESSION:
        return "unsupported_archive_entry", f"compression method {info.compress_type} is not supported"
    if info.file_size > MAX_MEMBER_BYTES:
        return "archive_entry_too_large", (
            f"unpacks to {info.file_size / 2**20:.0f} MiB, over the {MAX_MEMBER_BYTES >> 20} MiB limit per photo"
        )
    if info.file_size > RATIO_CHECK_ABOVE and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        return "suspicious_compression_ratio", (
            f"{info.compress_size:,} bytes unpack to {info.file_size:,} (over {MAX_COMPRESSION_RATIO}:1), as in a "
            "zip bomb; no photo compresses that well: re-export it"
        )
    return "", None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> tuple[str, str | None]:
    """Copy one entry to ``target`` (at most its declared size); a corrupt entry or an archive under a photo's
    name leaves no file behind."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            # Never trust the declared size: copy at most that many bytes, then read on to the CRC check.
            head = src.read(min(info.file_size, 8))
            dst.write(head)
            shutil.copyfileobj(_limited(src, info.file_size - len(head)), dst)
            src.read(1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        target.unlink(missing_ok=True)
        return "corrupt_archive_entry", f"cannot be unpacked: {exc}"
    if head.startswith(ARCHIVE_MAGIC):
        target.unlink(missing_ok=True)
        return (
            "nested_archive",
            "an archive under a photo's name is not unpacked; unpack it and pass its photos",
        )
    return "", None


class _limited:
    """A read-only file wrapper that stops after ``limit`` bytes."""

    def __init__(self, handle, limit: int) -> None:  # type: ignore[no-untyped-def]
        self._handle, self._left = handle, limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(size)
        self._left -= len(data)
        return data


def _read_captions_jsonl(path: Path) -> dict[str, str]:
    size = path.stat().st_size
    if size > MAX_CAPTIONS_FILE_BYTES:
        raise IngestError(
            f"{path}: {size / 2**20:.0f} MiB, over the {MAX_CAPTIONS_FILE_BYTES >> 20} MiB limit for a captions file; "
            "keep one short caption per photo"
        )
    captions: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
            text = row.get("text", row.get("caption"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise IngestError(
                f"{path}:{lineno}: expected {{'file_name': ..., 'text': ...}} per line ({exc})"
            ) from exc
        if not isinstance(text, str):
            raise IngestError(f"{path}:{lineno}: 'text' must be a string")
        captions[str(PurePosixPath(name))] = text
    return captions


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in SIDECAR_SUFFIXES


def _sidecar_caption(path: Path, rejected: list[dict[str, str]], label: str) -> str | None:
    """The caption in ``path``'s sidecar ``.txt``/``.caption``; one over :data:`MAX_CAPTION_BYTES` is reported (as
    ``label``'s sidecar) and not used."""
    for suffix in (".txt", ".caption"):
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            with open(sidecar, "rb") as handle:
                data = handle.read(MAX_CAPTION_BYTES + 1)
            if len(data) > MAX_CAPTION_BYTES:
                detail = f"over {MAX_CAPTION_BYTES >> 10} KiB, not a caption; the template caption is used: shorten it"
                rejected.append(
                    {"source": f"{label}{suffix}", "reason": "caption_too_large", "detail": detail}
                )
                logger.warning("%s%s: %s", label, suffix, detail)
                return None
            text = data.decode("utf-8", errors="replace").strip()
            return text or None
    return None


def mask_owner(path: Path) -> tuple[Path, str, int] | None:
    """If ``path`` is a mask file: the folder and stem of the photo it belongs to, and its rank (0 wins)."""
    lower = path.name.lower()
    for rank, (suffix, _) in enumerate(MASK_SUFFIXES):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.parent, path.name[: -len(suffix)], rank
    if path.parent.name.lower() == KOHYA_MASK_DIR:
        return path.parent.parent, path.stem, len(MASK_SUFFIXES)
    return None


def _masks_beside(photo: Path) -> list[Path]:
    """The mask files on disk that belong to ``photo``, best first (for photos given one by one)."""
    found = [photo.with_name(photo.stem + suffix) for suffix, _ in MASK_SUFFIXES]
    kohya = photo.parent / KOHYA_MASK_DIR
    if kohya.is_dir():
        found += sorted(p for p in kohya.glob(f"{_glob_escape(photo.stem)}.*") if _is_candidate(p))
    return [p for p in found if p.is_file()]


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _attach(
    photos: list[tuple[Path, str]], masks: list[tuple[Path, str]], rejected: list[dict[str, str]]
) -> list[tuple[Path, str, Path | None, str | None]]:
    """Pair each photo ``(path, label)`` with its best mask ``(path, label)``; report orphans and extras."""
    by_owner: dict[tuple[Path, str], list[tuple[int, Path, str]]] = {}
    for path, label in masks:
        owner = mask_owner(path)
        if owner is not None:
            by_owner.setdefault(owner[:2], []).append((owner[2], path, label))
    used: set[tuple[Path, str]] = set()
    out = []
    for path, label in photos:
        key = (path.parent, path.stem)
        ranked = sorted(by_owner.get(key, []))
        out.append((path, label, ranked[0][1] if ranked else None, ranked[0][2] if ranked else None))
        if ranked and key not in used:
            used.add(key)
            for _, _, extra in ranked[1:]:
                rejected.append(
                    {
                        "source": extra,
                        "reason": "mask_ignored",
                        "detail": f"{ranked[0][2]} is this photo's mask",
                    }
                )
    for key, entries in by_owner.items():
        if key not in used:
            for _, _, label in sorted(entries):
                detail = f"no photo named {key[1]!r} beside this mask file; name it like its photo"
                rejected.append({"source": label, "reason": "mask_orphan", "detail": detail})
                logger.warning("%s: %s", label, detail)
    return out


def scan_folder(folder: Path, label_prefix: str = "") -> tuple[list[Candidate], list[dict[str, str]]]:
    """All candidate photos under ``folder`` (recursive, sorted), with sidecar or captions.jsonl captions and
    their mask files; and the report entries of mask files that belong to no photo."""
    jsonl = folder / CAPTIONS_FILE
    listed = _read_captions_jsonl(jsonl) if jsonl.is_file() else {}

    def label(path: Path) -> str:
        return f"{label_prefix}{path.relative_to(folder).as_posix()}" if label_prefix else str(path)

    files = sorted(p for p in folder.rglob("*") if _is_candidate(p))
    masks = [(p, label(p)) for p in files if mask_owner(p) is not None]
    photos = [(p, label(p)) for p in files if mask_owner(p) is None]
    rejected: list[dict[str, str]] = []
    out = []
    for path, name, mask, mask_label in _attach(photos, masks, rejected):
        caption, origin = _sidecar_caption(path, rejected, name.removesuffix(path.suffix)), "sidecar"
        rel = path.relative_to(folder).as_posix()
        if caption is None and rel in listed:
            caption, origin = listed[rel].strip() or None, CAPTIONS_FILE
        out.append(Candidate(path, name, caption, origin if caption else "template", mask, mask_label))
    return out, rejected


def _single_files(files: list[Path], scan: SourceScan) -> None:
    """Photos given one by one: each with the mask file beside it on disk; a mask file given alone is reported
    unless its photo is given too."""
    photos = [(p, str(p)) for p in files if mask_owner(p) is None]
    masks = [(p, str(p)) for p in files if mask_owner(p) is not None]
    given = {p.resolve() for p, _ in masks}
    masks += [(m, str(m)) for p, _ in photos for m in _masks_beside(p) if m.resolve() not in given]
    for path, name, mask, mask_label in _attach(photos, masks, scan.rejected):
        caption = _sidecar_caption(path, scan.rejected, str(path.with_suffix("")))
        scan.candidates.append(
            Candidate(path, name, caption, "sidecar" if caption else "template", mask, mask_label)
        )


def collect(sources: Sequence[Path], unpack_root: Path) -> SourceScan:
    """Expand folders, archives and single files into the list of candidate photos.

    Raises:
        IngestError: no source given, or a source that does not exist.
    """
    if not sources:
        raise IngestError("no photo source given: pass a folder, a .zip archive or a list of image files")
    scan = SourceScan()
    pending: list[tuple[Path, str | None]] = [(Path(s), None) for s in sources]
    singles: list[Path] = []
    number = 0
    while pending:
        src, label = pending.pop(0)
        if src.is_dir():
            found, orphans = scan_folder(src)
            scan.rejected += orphans
            for cand in found:
                if cand.path.suffix.lower() == ".zip":  # archives inside a folder are unpacked too
                    pending.append((cand.path, cand.source))
                else:
                    scan.candidates.append(cand)
        elif src.is_file() and src.suffix.lower() == ".zip":
            folder, refused = unpack_zip(src, unpack_root / f"archive-{number}")
            number += 1
            found, orphans = scan_folder(folder, label_prefix=f"{label or src.name}!")
            scan.rejected += refused + orphans
            scan.candidates += found
        elif src.is_file():
            singles.append(src)
        else:
            raise IngestError(
                f"photo source {src} does not exist; pass an existing folder, .zip or image file"
            )
    _single_files(singles, scan)
    return scan
