"""Turning validated photos into an immutable, content-addressed dataset folder.

Layout of ``<home>/datasets/<brand>/<fingerprint>/``:

- ``<pixels-sha20>.png`` the normalised images, 8-bit RGB (content-named, so the order of the sources does not
  matter); by default at the photo's own aspect ratio with about ``resolution**2`` pixels (``crop: keep``);
- ``<pixels-sha20>.mask.png`` beside an image that has a product mask: 8-bit greyscale, the image's size,
  255 = product, 0 = background, soft edges kept (from the photo's alpha, a mask file, or computed on a plain
  background: :mod:`brandtune.ingest.masks`);
- ``metadata.jsonl`` one ``{"file_name", "text", "width", "height"}`` line per image (``width``/``height``: the
  photo's size as displayed), plus ``"mask_file_name"`` (a name or null) on every line when any image has a mask:
  ``datasets.load_dataset("imagefolder", data_dir=...)`` loads the folder with its captions (and a ``mask`` image
  column);
- ``manifest.json`` per image: source path, source sha256, normalised sha256, original size, caption, and ``mask``
  (``source``, ``file``, ``sha256``, ``pixels_sha256``, ``coverage``) or ``null`` with a ``mask_note`` saying why;
- ``report.json`` every rejected file with its reason, the notes on converted ones, and ``masks``: the count per
  mask source, the bad mask files with their reason codes and the photos left without a mask;
- ``report.html`` and ``masks.png`` a contact sheet of every image with its mask overlaid, to check at a glance.

The fingerprint covers the normalised pixels, the captions, the mask pixels and the settings.

The folder is built under a temporary name and renamed into place in one step, so a folder with the final name is
always complete. ``<home>/datasets/<brand>/LATEST`` names the dataset of the newest (latest-started) ingest of
the brand; it only moves forward, under a lock, and each failed ingest keeps its own report
(:mod:`brandtune.ingest.pointers`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from brandtune.config import BrandSpec, IngestConfig, ensure_trigger
from brandtune.errors import IngestError
from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, canonical_json, publish_dir, replace_dir, sha256_bytes
from brandtune.ingest.images import Accepted, Rejected, process_photo
from brandtune.ingest.layout import dataset_images
from brandtune.ingest.pointers import Attempt, advance_latest, read_latest, write_failed_report
from brandtune.ingest.report import write_contact_sheet
from brandtune.ingest.sources import Candidate, SourceScan, collect
from brandtune.provenance import brandtune_version
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

FINGERPRINT_LEN = 16
SERIAL_BELOW = 48  # fewer photos than this are processed in-process: a pool costs more than it saves


@dataclass(frozen=True)
class IngestResult:
    """What an ingest produced."""

    brand: str
    fingerprint: str
    path: Path
    num_images: int
    num_rejected: int
    reused: bool  # True when an identical dataset already existed and was reused

    @property
    def report_path(self) -> Path:
        return self.path / "report.json"

    @property
    def metadata_path(self) -> Path:
        return self.path / "metadata.jsonl"

    @property
    def contact_sheet(self) -> Path:
        """``report.html``: every image with its mask overlaid."""
        return self.path / "report.html"

    def mask_counts(self) -> dict[str, int]:
        """How many images got their mask from each source (``alpha``, ``file``, ``auto``) and how many have none."""
        counts = json.loads(self.report_path.read_text(encoding="utf-8")).get("masks", {}).get("counts", {})
        return {str(k): int(v) for k, v in counts.items()}


def _caption(candidate: Candidate, cfg: IngestConfig) -> tuple[str, str, bool]:
    if candidate.caption:
        text, source = " ".join(candidate.caption.split()), candidate.caption_source
    else:
        text, source = cfg.caption_template.format(trigger=cfg.trigger, subject=cfg.subject), "template"
    text, added = ensure_trigger(text, cfg.trigger)
    return text, source, added


def _run_workers(
    candidates: list[Candidate], out_dir: Path, cfg: IngestConfig, progress: bool
) -> Iterator[Accepted | Rejected]:
    workers = cfg.workers or os.cpu_count() or 1
    bar = tqdm(total=len(candidates), desc="ingest", unit="img", disable=not progress)
    if workers == 1 or len(candidates) < SERIAL_BELOW:
        for i, cand in enumerate(candidates):
            yield process_photo(i, cand.path, out_dir, cfg, cand.mask)
            bar.update()
    else:
        # spawn: ingest may run inside a process with threads (Prefect, MLflow); fork would be unsafe there.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            paths = [c.path for c in candidates]
            chunk = max(1, min(32, len(paths) // (workers * 8)))
            results = pool.map(
                process_photo,
                range(len(paths)),
                paths,
                [out_dir] * len(paths),
                [cfg] * len(paths),
                [c.mask for c in candidates],
                chunksize=chunk,
            )
            for result in results:
                yield result
                bar.update()
    bar.close()


def _dedupe(accepted: list[Accepted], cfg: IngestConfig) -> tuple[list[Accepted], dict[int, tuple[str, str]]]:
    """Drop exact (same source bytes or same pixels) and near (perceptual hash) duplicates, first one wins."""
    keep: list[Accepted] = []
    dropped: dict[int, tuple[str, str]] = {}
    by_sha: dict[str, int] = {}
    hashes = np.zeros(len(accepted), dtype=np.uint64)
    for item in accepted:
        twin = by_sha.get(item.source_sha256, by_sha.get(item.pixels_sha256))
        if twin is not None:
            dropped[item.index] = ("duplicate", f"exact duplicate of #{twin}")
            continue
        if cfg.near_duplicate_distance >= 0 and keep:
            dist = np.bitwise_count(hashes[: len(keep)] ^ np.uint64(item.phash))
            nearest = int(dist.argmin())
            if dist[nearest] <= cfg.near_duplicate_distance:
                dropped[item.index] = (
                    "near_duplicate",
                    f"near duplicate of #{keep[nearest].index} (perceptual-hash distance {int(dist[nearest])} "
                    f"<= {cfg.near_duplicate_distance})",
                )
                continue
        hashes[len(keep)] = item.phash
        by_sha[item.source_sha256] = by_sha[item.pixels_sha256] = item.index
        keep.append(item)
    return keep, dropped


def compute_fingerprint(items: Sequence[tuple[str, ...]], cfg: IngestConfig) -> str:
    """Hash of the items (normalised pixels, caption, mask pixels) and ingest settings; independent of file names
    and order."""
    payload = {"settings": cfg.fingerprint_fields(), "items": sorted(items)}
    return sha256_bytes(canonical_json(payload).encode())[:FINGERPRINT_LEN]


def _label(text: str, candidates: list[Candidate]) -> str:
    """Replace '#<index>' references in a reason with the source names people know."""
    return re.sub(r"#(\d+)", lambda m: candidates[int(m.group(1))].source, text)


def _mask_entry(item: Accepted, name: str, staging: Path) -> dict[str, Any]:
    """The manifest's ``mask`` (and ``mask_note``) of one image; moves its mask file into the dataset."""
    if item.mask_tmp_path is None:
        return {"mask": None, "mask_note": item.mask_note or "no mask"}
    mask_name = name.removesuffix(".png") + ".mask.png"
    os.replace(item.mask_tmp_path, staging / mask_name)
    mask = {
        "source": item.mask_source,
        "file": mask_name,
        "sha256": item.mask_file_sha256,
        "pixels_sha256": item.mask_pixels_sha256,
        "coverage": item.mask_coverage,
    }
    return {"mask": mask}


def _mask_report(keep: list[Accepted], candidates: list[Candidate]) -> dict[str, Any]:
    """report.json's ``masks``: the count per source, the bad mask files and the photos left without a mask."""
    counts = {"file": 0, "alpha": 0, "auto": 0, "none": 0}
    problems, notes = [], []
    for item in keep:
        cand = candidates[item.index]
        counts[item.mask_source or "none"] += 1
        if item.mask_problem is not None:
            code, detail = item.mask_problem
            problems.append(
                {"source": cand.mask_source, "photo": cand.source, "reason": code, "detail": detail}
            )
        elif item.mask_tmp_path is None:
            notes.append({"source": cand.source, "note": item.mask_note, "detail": item.mask_detail})
    return {"counts": counts, "problems": problems, "without_mask": notes}


def _write_dataset(
    staging: Path,
    brand: BrandSpec,
    keep: list[Accepted],
    candidates: list[Candidate],
    rejected: list[dict[str, str]],
    notes: list[dict[str, Any]],
    cfg: IngestConfig,
    fingerprint: str,
    sources: Sequence[Path],
) -> None:
    rows, images = [], []
    for item in sorted(keep, key=lambda a: a.pixels_sha256):
        cand = candidates[item.index]
        caption, caption_source, added = _caption(cand, cfg)
        name = f"{item.pixels_sha256[:20]}.png"
        os.replace(item.tmp_path, staging / name)
        mask = _mask_entry(item, name, staging)
        rows.append({"file_name": name, "text": caption, "width": item.width, "height": item.height})
        rows[-1]["mask_file_name"] = mask["mask"] and mask["mask"]["file"]
        images.append(
            {
                "file_name": name,
                "source": cand.source,
                "source_sha256": item.source_sha256,
                "sha256": item.file_sha256,
                "pixels_sha256": item.pixels_sha256,
                "original_size": [item.width, item.height],
                "original_aspect": round(item.width / item.height, 4),
                "format": item.format,
                "caption": caption,
                "caption_source": caption_source,
                "trigger_added": added,
                "notes": item.notes,
                **mask,
            }
        )
    if not any(r["mask_file_name"] for r in rows):  # the column only when some image has a mask
        for r in rows:
            del r["mask_file_name"]
    (staging / "metadata.jsonl").write_text("".join(canonical_json(r) + "\n" for r in rows), encoding="utf-8")
    common = {
        "brand": brand.name,
        "fingerprint": fingerprint,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "brandtune_version": brandtune_version(),
        "settings": cfg.fingerprint_fields(),
        "sources": [str(s) for s in sources],
    }
    report = {
        **common,
        "accepted": len(images),
        "rejected": rejected,
        "converted": notes,
        "masks": _mask_report(keep, candidates),
    }
    atomic_write_json(staging / "report.json", report)
    write_contact_sheet(staging, images, report)
    # The manifest is written last: a folder with a manifest is complete even before the rename.
    atomic_write_json(staging / "manifest.json", {**common, "resolution": cfg.resolution, "images": images})


def _screen(
    scan: SourceScan, work: Path, cfg: IngestConfig, progress: bool
) -> tuple[list[Accepted], list[dict[str, str]]]:
    """Process every candidate and drop the duplicates: the photos kept, and every rejection with its reason."""
    accepted, rejected = [], list(scan.rejected)
    for result in _run_workers(scan.candidates, work, cfg, progress):
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            src = scan.candidates[result.index].source
            rejected.append({"source": src, "reason": result.reason, "detail": result.detail})
    accepted.sort(key=lambda a: a.index)
    for item in accepted:
        if item.mask_problem is not None:
            cand = scan.candidates[item.index]
            logger.warning("%s: mask %s not used (%s): %s", cand.source, cand.mask_source, *item.mask_problem)
    keep, dropped = _dedupe(accepted, cfg)
    for index, (reason, detail) in sorted(dropped.items()):
        src = scan.candidates[index].source
        rejected.append({"source": src, "reason": reason, "detail": _label(detail, scan.candidates)})
    return keep, rejected


def _too_few(
    brand: BrandSpec,
    brand_root: Path,
    keep: list[Accepted],
    rejected: list[dict[str, str]],
    cfg: IngestConfig,
    sources: Sequence[Path],
    attempt: Attempt,
) -> IngestError:
    """Write this attempt's failure report (and the ``failed-report.json`` copy); return the error that names it."""
    summary = {
        "brand": brand.name,
        "accepted": len(keep),
        "rejected": rejected,
        "sources": [str(s) for s in sources],
    }
    report = write_failed_report(brand_root, summary, attempt)
    return IngestError(
        f"ingest of {', '.join(map(str, sources))}: {len(keep)} photo(s) accepted, at least "
        f"{cfg.min_images} needed; {len(rejected)} rejected (the newest failure is also in failed-report.json), "
        f"reasons in {report}"
    )


def _reusable(final: Path, fingerprint: str) -> bool:
    """Whether an existing dataset folder under ``fingerprint`` is complete and verifies (every image and mask has
    the sha256 its manifest records); one that does not is logged and rebuilt."""
    if not final.exists():
        return False
    try:
        images = dataset_images(final)
        recorded = json.loads((final / "manifest.json").read_text(encoding="utf-8")).get("fingerprint")
    except (IngestError, OSError, ValueError) as exc:
        logger.warning("existing dataset %s does not verify (%s): rebuilding it", final, exc)
        return False
    if recorded != fingerprint or not images:
        logger.warning("existing dataset %s records fingerprint %s: rebuilding it", final, recorded)
        return False
    return True


def ingest(
    brand: BrandSpec,
    sources: Sequence[Path] | Path,
    config: IngestConfig | None = None,
    settings: Settings | None = None,
    progress: bool = True,
) -> IngestResult:
    """Validate, normalise, dedupe and caption a brand's photos into a versioned dataset.

    Args:
        brand: The brand spec; its trigger, subject and caption template apply unless ``config`` overrides them.
        sources: Folders (recursive), ``.zip`` archives and/or single image files.
        config: Ingest settings; default ``IngestConfig.for_brand(brand)``.
        settings: Where datasets live; default from the environment.
        progress: Show a progress bar.

    Returns:
        The dataset's fingerprint and folder. Re-ingesting the same input returns the existing folder when it
        verifies (:func:`~brandtune.ingest.layout.dataset_images`); a damaged one is rebuilt and replaced in one step.

    Raises:
        IngestError: a source is missing or unreadable, or fewer than ``config.min_images`` photos were accepted
            (the message gives the path of the report that lists every rejected file).
    """
    cfg = config or IngestConfig.for_brand(brand)
    settings = settings or Settings.from_env()
    sources = [Path(sources)] if isinstance(sources, str | Path) else [Path(s) for s in sources]
    brand_root = settings.datasets_dir / brand.name
    brand_root.mkdir(parents=True, exist_ok=True)
    attempt = Attempt.now()  # what "newer" means for LATEST and failed-report.json
    staging = Path(tempfile.mkdtemp(prefix=".tmp-ingest-", dir=brand_root))
    try:
        scan = collect(sources, staging / "unpacked")
        logger.info(
            "ingest %s: %d candidate files from %d source(s)", brand.name, len(scan.candidates), len(sources)
        )
        work = staging / "work"
        work.mkdir()
        keep, rejected = _screen(scan, work, cfg, progress)
        notes = [{"source": scan.candidates[a.index].source, "notes": a.notes} for a in keep if a.notes]
        if len(keep) < cfg.min_images:
            raise _too_few(brand, brand_root, keep, rejected, cfg, sources, attempt)
        items = [
            (a.pixels_sha256, _caption(scan.candidates[a.index], cfg)[0], a.mask_pixels_sha256 or "")
            for a in keep
        ]
        fingerprint = compute_fingerprint(items, cfg)
        final = brand_root / fingerprint
        reused = _reusable(final, fingerprint)
        if not reused:
            out = staging / "dataset"
            out.mkdir()
            _write_dataset(out, brand, keep, scan.candidates, rejected, notes, cfg, fingerprint, sources)
            if final.exists():  # a damaged folder under this fingerprint: replaced in one step
                replace_dir(out, final)
                logger.warning("rebuilt dataset %s, which failed verification", final)
            else:
                reused = not publish_dir(out, final)
        fault_point("ingest.before_latest")
        advance_latest(brand_root, fingerprint, attempt)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "dataset %s/%s: %d images, %d rejected%s",
        brand.name,
        fingerprint,
        len(keep),
        len(rejected),
        " (reused existing)" if reused else "",
    )
    if not reused:  # a new fingerprint: deployment triggers may retrain (brandtune.events)
        from brandtune.events import dataset_created

        dataset_created(
            brand.name, fingerprint, len(keep), str(final), retrain=brand.automation.retrain_on_new_photos
        )
    return IngestResult(brand.name, fingerprint, final, len(keep), len(rejected), reused)


def find_dataset(brand: str, fingerprint: str | None = None, settings: Settings | None = None) -> Path:
    """The folder of a brand's dataset: the given fingerprint (or a unique prefix of one), else the latest.

    Raises:
        IngestError: no such dataset (the message lists the brand's datasets and how to make one).
    """
    settings = settings or Settings.from_env()
    root = settings.datasets_dir / brand
    have = sorted(p.name for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []
    if fingerprint is None:
        fingerprint = read_latest(root)
        if fingerprint is None:
            raise IngestError(
                f"brand {brand!r} has no dataset yet; run `brandtune ingest --brand {brand}` first"
            )
    matches = [name for name in have if name.startswith(fingerprint)]
    if len(matches) != 1:
        listing = ", ".join(have) or "none"
        what = "is ambiguous" if matches else "does not exist"
        raise IngestError(f"dataset {brand}/{fingerprint} {what} under {root} (datasets: {listing})")
    return root / matches[0]
