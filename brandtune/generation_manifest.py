"""A campaign's ``manifest.json``: its schema, the checks that treat it as untrusted input, and crash-safe writes.

A manifest may come from anywhere (``--reproduce`` takes one from the user; a resumed job reads the one in
``--output``, which anyone may have edited), so it is read as untrusted input: its size is bounded, its schema is
validated (every key is one brandtune writes: an unknown key is an error that names it, so a misspelt or foreign
key is never silently ignored), and every image path must resolve to a ``.png`` inside the output folder, symlinks
included. The first bad entry is reported in one line, with its index and field, before anything is written.

Writes are crash-safe: a PNG goes to a temporary file in its folder, is fsynced and renamed into place, and only
then is its entry (with the sha256 of the bytes written) put in the manifest, which is itself rewritten atomically.
So after a SIGKILL at any point the manifest lists only images whose bytes are on disk; a resume re-checks every
entry's sha256 and makes again any image that has no entry or whose file differs from it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brandtune.config import GenerateConfig, SamplerConfig
from brandtune.config.device import LEGACY_DEVICE, LEGACY_DTYPE
from brandtune.errors import GenerationError
from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, fsync_dir, sha256_bytes, sha256_file
from brandtune.provenance import brandtune_version

if TYPE_CHECKING:
    from PIL import Image

    from brandtune.doctor import Finding
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: A manifest larger than this is refused unread (a real one is about 1 KiB an image, and jobs are bounded).
MAX_MANIFEST_BYTES = 64 << 20
SHA256_RE = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManifestBatch(_Strict):
    """The pipeline call an image came from: every prompt and seed of it, and the image's place in it."""

    prompts: list[str] = Field(min_length=1, max_length=64, description="Prompts of the batch, in order.")
    seeds: list[int] = Field(min_length=1, max_length=64, description="Seeds of the batch, in order.")
    index: int = Field(ge=0, description="The image's position in the batch.")


class ManifestImage(_Strict):
    """One image of a manifest: what ``reproduce`` and a resume read, and the informative keys brandtune writes."""

    file: str = Field(description="PNG path relative to the campaign folder.")
    batch: ManifestBatch = Field(description="The batch the image was generated in.")
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_RE,
        description="sha256 of the PNG file (absent in manifests before 0.x).",
    )
    prompt: str | None = Field(default=None, description="The image's prompt (must match its batch entry).")
    seed: int | None = Field(default=None, description="The image's seed (must match its batch entry).")
    width: int | None = Field(default=None, ge=32, le=4096, description="Width in px; empty: the sampler's.")
    height: int | None = Field(
        default=None, ge=32, le=4096, description="Height in px; empty: the sampler's."
    )
    size: list[int | None] | None = Field(
        default=None, max_length=2, description="[width, height] (informative)."
    )
    setting: str | None = Field(default=None, description="The setting key (informative).")
    aspect: str | None = Field(default=None, description="The aspect (informative).")
    brand: str | None = Field(default=None, description="Brand slug (informative).")
    negative_prompt: str | None = Field(default=None, description="Negative prompt (informative).")
    steps: int | None = Field(default=None, description="Denoising steps (informative).")
    guidance: float | None = Field(default=None, description="Guidance scale (informative).")
    scheduler: str | None = Field(default=None, description="Sampler name (informative).")
    model: str | None = Field(default=None, description="The model asked for (informative).")
    version: str | None = Field(default=None, description="Adapter version (informative).")
    base_model: str | None = Field(default=None, description="Base model (informative).")
    base_revision: str | None = Field(default=None, description="Base revision (informative).")
    adapter_sha256: str | None = Field(default=None, description="Adapter weights' sha256 (informative).")
    device: str | None = Field(default=None, description="Device it was sampled on (informative).")
    dtype: str | None = Field(default=None, description="Weight dtype it was sampled in (informative).")


class ManifestModel(_Strict):
    """The model the images came from."""

    model: str = Field(default="", description="The model URI asked for, or 'base'.")
    version: str = Field(
        pattern=r"^\d*$", description="Registered adapter version; empty for the base model."
    )
    base_model: str = Field(default="", description="The base model's name.")
    base_revision: str = Field(default="", description="The base model's revision.")
    adapter_sha256: str | None = Field(
        default=None,
        pattern=SHA256_RE,
        description="The adapter weights' sha256 (absent for the base model).",
    )
    device: Literal["cpu", "cuda"] = Field(
        default=LEGACY_DEVICE,
        description="Device the images were sampled on (absent before it was recorded: they were made on the CPU).",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default=LEGACY_DTYPE,
        description="Weight dtype the images were sampled in (absent before it was recorded: float32).",
    )


class Manifest(_Strict):
    """A campaign's manifest.json: the job, the sampler, the model, the images."""

    job: GenerateConfig = Field(description="The job as it was run.")
    sampler: SamplerConfig = Field(description="The sampler with every setting filled for the model.")
    model: ManifestModel = Field(description="The adapter the images came from.")
    images: list[ManifestImage] = Field(description="Every image of the job.")
    brandtune_version: str | None = Field(default=None, description="brandtune that wrote it (informative).")
    updated_at: str | None = Field(default=None, description="Time of the last write (informative).")


def _where(loc: tuple[Any, ...]) -> str:
    """``("images", 3, "batch", "seeds", 0)`` -> ``images[3].batch.seeds[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


def _schema_error(exc: ValidationError, source: str, hint: str) -> GenerationError:
    first = exc.errors()[0]
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return GenerationError(f"{source}: {_where(tuple(first['loc']))}: {msg}{more}; {hint}")


def resolve_inside(root: Path, file: str) -> Path | None:
    """``root / file`` when ``file`` is a relative ``.png`` path that stays inside ``root`` after resolving
    symlinks; ``None`` otherwise (absolute, ``..``, backslashes, another suffix, or a link that leads out)."""
    rel = PurePosixPath(file)
    if not file or "\\" in file or rel.is_absolute() or ".." in rel.parts or rel.suffix != ".png":
        return None
    root = root.resolve()
    target = (root / rel).resolve()
    return root / rel if target.is_relative_to(root) and target != root else None


def read_manifest(path: Path, output_dir: Path, *, hint: str) -> Manifest:
    """Read and check an untrusted manifest.json whose images live in ``output_dir``.

    Args:
        path: The manifest file.
        output_dir: The folder its image paths are relative to.
        hint: What the user should do about a bad manifest (ends each error message).

    Raises:
        GenerationError: one line naming the file, the first bad entry (index and field) and ``hint``.
    """
    from brandtune.config import SLUG_RE

    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise GenerationError(f"{path}: no such file; give a campaign's manifest.json") from None
    except OSError as exc:
        raise GenerationError(f"{path}: cannot be read ({exc.strerror}); {hint}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise GenerationError(
            f"{path}: over {MAX_MANIFEST_BYTES >> 20} MiB, not a brandtune manifest; {hint}"
        )
    try:
        data = Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenerationError(f"{path}: not a readable JSON manifest ({exc}); {hint}") from exc
    except ValidationError as exc:
        raise _schema_error(exc, str(path), hint) from exc
    if not SLUG_RE.match(data.job.brand):
        raise GenerationError(
            f"{path}: job.brand {data.job.brand!r} is not a brand slug such as 'acme'; {hint}"
        )
    if len(data.images) > data.job.max_images:
        raise GenerationError(
            f"{path}: {len(data.images)} images, over its max_images ({data.job.max_images}); {hint}"
        )
    seen: set[str] = set()
    for i, entry in enumerate(data.images):
        _check_entry(path, output_dir, i, entry, hint)
        if entry.file in seen:
            raise GenerationError(f"{path}: images[{i}].file: {entry.file!r} is listed twice; {hint}")
        seen.add(entry.file)
    return data


def _check_entry(path: Path, output_dir: Path, i: int, entry: ManifestImage, hint: str) -> None:
    where = f"{path}: images[{i}]"
    if resolve_inside(Path(output_dir), entry.file) is None:
        raise GenerationError(
            f"{where}.file: {entry.file!r} is not a .png path inside the output folder {output_dir}; {hint}"
        )
    batch = entry.batch
    if len(batch.prompts) != len(batch.seeds) or batch.index >= len(batch.prompts):
        raise GenerationError(
            f"{where}.batch: {len(batch.prompts)} prompts, {len(batch.seeds)} seeds and index {batch.index} "
            f"do not fit together; {hint}"
        )
    if entry.prompt not in (None, batch.prompts[batch.index]):
        raise GenerationError(f"{where}.prompt: differs from its batch record; {hint}")
    if entry.seed not in (None, batch.seeds[batch.index]):
        raise GenerationError(f"{where}.seed: {entry.seed} differs from its batch record; {hint}")


def write_manifest(
    out: Path, cfg: GenerateConfig, sampler: SamplerConfig, info: dict[str, str], images: list[dict[str, Any]]
) -> Path:
    """Rewrite ``out/manifest.json`` atomically (temp file, fsync, rename, folder fsync) with ``images``."""
    common = {
        "brand": cfg.brand,
        "negative_prompt": sampler.negative_prompt,
        "steps": sampler.num_inference_steps,
        "guidance": sampler.guidance_scale,
        "size": [sampler.width, sampler.height],
        "scheduler": sampler.scheduler,
        **info,
    }
    data = {
        "job": cfg.model_dump(mode="json"),
        "sampler": sampler.model_dump(mode="json"),
        "model": info,
        "brandtune_version": brandtune_version(),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "images": [{**common, **img} for img in images],
    }
    try:
        atomic_write_json(out / MANIFEST, data)
    except OSError as exc:
        raise _write_error(out / MANIFEST, exc) from exc
    fsync_dir(out)
    return out / MANIFEST


def _write_error(path: Path, exc: OSError) -> GenerationError:
    return GenerationError(
        f"{path}: cannot be written ({exc.strerror or exc}); free space or fix the folder's permissions, then run "
        "the same command again: the job resumes from the images already recorded"
    )


def write_png(image: Image.Image, path: Path) -> str:
    """Write ``image`` to ``path`` as PNG, crash-safely; return the sha256 of the bytes written.

    The bytes go to ``.<name>.<random>.tmp`` beside ``path``, are fsynced, renamed over ``path`` and the folder is
    fsynced: a reader (or a resume after SIGKILL) finds the old file or the whole new one, never a part.
    """
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data[: len(data) // 2])
            fault_point("generation.mid_png")  # a kill here leaves half a temporary file, never half a PNG
            handle.write(data[len(data) // 2 :])
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    fsync_dir(path.parent)
    fault_point("generation.after_png")  # a kill here leaves a whole PNG that has no manifest entry yet
    return sha256_bytes(data)


def remove_stale_temps(out: Path, files: list[str]) -> None:
    """Remove the temporary files a killed writer left beside ``files`` (one writer per output folder)."""
    for file in files:
        path = out / file
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            logger.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


def verified_entries(
    out: Path, rows: list[dict[str, Any]], previous: Manifest | None
) -> dict[str, dict[str, Any]]:
    """The previous manifest's entries for ``rows`` whose file exists and matches the entry's sha256.

    Every other image of ``rows`` that is on disk is logged (with why) and will be made again: a file without an
    entry, with an entry but no sha256 (an older manifest), or whose bytes differ (truncated or changed).
    """
    known = {e.file: e for e in previous.images} if previous else {}
    done: dict[str, dict[str, Any]] = {}
    for row in rows:
        path, entry = out / row["file"], known.get(row["file"])
        exists = path.is_file() and not path.is_symlink()
        if entry is not None and entry.sha256 and exists and sha256_file(path) == entry.sha256:
            done[row["file"]] = entry.model_dump(mode="json", exclude_none=True)
            continue
        if entry is None and exists:
            why = "has no manifest entry (a job killed before recording it, or --overwrite)"
        elif entry is not None and exists and not entry.sha256:
            why = "has a manifest entry without a sha256, so it cannot be verified"
        elif entry is not None and exists:
            why = "differs from the sha256 in its manifest entry (truncated or changed)"
        elif entry is not None:
            why = "is listed in the manifest but missing"
        else:
            continue
        logger.warning("%s %s; making it again", path, why)
    return done


def job_identity(cfg: GenerateConfig, sampler: SamplerConfig, info: dict[str, str]) -> dict[str, Any]:
    """The settings every image of one output folder must share, by the name a user knows them by."""
    ident: dict[str, Any] = {
        "adapter version": info.get("version", ""),
        "adapter sha256": info.get("adapter_sha256"),
        "base model": info.get("base_model", ""),
        "base revision": info.get("base_revision", ""),
        "init image": str(cfg.init_image) if cfg.init_image else None,
        "strength": cfg.strength if cfg.init_image else None,
        "fuse": cfg.fuse,
        # images made on another device or in another dtype differ; a manifest without them: cpu/float32
        "device": info.get("device") or LEGACY_DEVICE,
        "dtype": info.get("dtype") or LEGACY_DTYPE,
    }
    for key, value in sampler.model_dump(mode="json").items():
        ident[f"sampler {key}"] = value
    return ident


def check_same_job(
    out: Path, previous: Manifest, cfg: GenerateConfig, sampler: SamplerConfig, info: dict[str, str]
) -> None:
    """Refuse to add images to ``out`` made with other settings than its manifest's (one line: which, old, new).

    Raises:
        GenerationError: the model, adapter, base revision, sampler, img2img settings, device or dtype differ.
    """
    old = job_identity(previous.job, previous.sampler, previous.model.model_dump(mode="json"))
    new = job_identity(cfg, sampler, info)
    for key, value in new.items():
        if old.get(key) != value:
            raise GenerationError(
                f"--output {out} holds images made with {key} {old.get(key)!r}, but this job has {value!r}: "
                "use a new --output, or --overwrite to make every image again with the new settings"
            )


def check_same_images(out: Path, previous: Manifest | None, rows: list[dict[str, Any]]) -> None:
    """Refuse a job whose image at a file name has another prompt or seed than the manifest's image there."""
    known = {e.file: e for e in previous.images} if previous else {}
    for row in rows:
        entry = known.get(row["file"])
        if entry is None:
            continue
        for key in ("prompt", "seed"):
            got = getattr(entry, key)
            if got is not None and got != row[key]:
                raise GenerationError(
                    f"--output {out}: {row['file']} was made with {key} {got!r}, but this job has {row[key]!r}: "
                    "use a new --output, or --overwrite to make every image again"
                )


def check_reproduce_model(manifest: Path, recorded: ManifestModel, info: dict[str, str]) -> None:
    """Refuse to reproduce with an adapter or base revision other than the recorded ones (one line).

    Raises:
        GenerationError: the loaded adapter's sha256 or the base's revision differs from the manifest's.
    """
    what = (
        f"{info.get('model') or 'base'} version {recorded.version}" if recorded.version else "the base model"
    )
    pairs = [("adapter sha256", recorded.adapter_sha256, info.get("adapter_sha256")),
             ("base revision", recorded.base_revision, info.get("base_revision"))]  # fmt: skip
    for key, want, got in pairs:
        if want and got != want:
            raise GenerationError(
                f"--reproduce {manifest}: {what} has {key} {got!r} here, but the manifest recorded {want!r}: these "
                "are not the weights the images were made with; point MLFLOW_TRACKING_URI at the registry (and "
                "the base at the revision) that made them"
            )
        if not want:
            logger.warning("%s records no %s; reproducing without checking it", manifest, key)


def check(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """Doctor check of the campaigns under ``<home>/campaigns`` (jobs and standard campaigns): a manifest that does not pass the untrusted-input
    checks, images whose file is not what their entry records, and temporary files a killed job left (``fix``
    removes those). Campaigns written to another ``--output`` are not scanned."""
    from brandtune.doctor import Finding

    root = settings.home / "campaigns"
    found: list[Finding] = []
    pattern = (
        brand or "*"
    )  # a job's folder, or a standard campaign's run (campaigns/<brand>/<campaign>/<run>)
    for path in sorted({*root.glob(f"{pattern}/*/{MANIFEST}"), *root.glob(f"{pattern}/*/*/{MANIFEST}")}):
        out = path.parent
        temps = sorted(out.glob("*/.*.png.*.tmp"))
        if temps:
            if fix:
                for tmp in temps:
                    tmp.unlink(missing_ok=True)
            found.append(
                Finding(
                    "campaign",
                    str(out),
                    f"{len(temps)} temporary file(s) left by a killed generate job",
                    "--fix removes them",
                    fixed=fix,
                )
            )
        try:
            manifest = read_manifest(path, out, hint="delete the folder or re-run the job with --overwrite")
        except GenerationError as exc:
            found.append(
                Finding("campaign", str(path), str(exc), "delete the folder or re-run with --overwrite")
            )
            continue
        bad = [e.file for e in manifest.images if not _verified(out, e)]
        if bad:
            found.append(
                Finding(
                    "campaign",
                    str(out),
                    f"{len(bad)} image(s) do not match their manifest sha256 ({bad[0]}, ...)",
                    "re-run the same job with --output set to this folder: it makes them again",
                )
            )
    return found


def _verified(out: Path, entry: ManifestImage) -> bool:
    path = out / entry.file
    return bool(entry.sha256) and path.is_file() and sha256_file(path) == entry.sha256
