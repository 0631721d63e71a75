"""Campaign generation: one prompt x several settings x N variations, from a registered adapter.

A job writes ``<output>/<setting>/<nnn>_seed<seed>.png``, one contact sheet per setting, an ``index.html`` gallery
and ``manifest.json``. The manifest lists, for every image, the prompt, negative prompt, seed, sampler, size,
adapter version, base model and the image's sha256, and the batch it was generated in, so ``reproduce`` makes it
again bit for bit on the same hardware. Re-running a job into the same folder resumes it: an image counts as done
only if its file matches the sha256 of its entry (see :mod:`brandtune.generation_manifest` for the crash-safe
writes and the checks on a manifest read back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.config import (
    BrandSpec,
    GenerateConfig,
    Placement,
    SamplerConfig,
    load_brand,
    resolve_placement,
)
from brandtune.config._base import slugify
from brandtune.errors import GenerationError, RegistryError
from brandtune.generation_manifest import (
    MANIFEST,
    Manifest,
    check_reproduce_model,
    check_same_images,
    check_same_job,
    read_manifest,
    remove_stale_temps,
    resolve_inside,
    verified_entries,
    write_manifest,
    write_png,
)
from brandtune.sampling import apply_scheduler, aspect_samplers, resolve_sampler, sample_batch
from brandtune.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MANIFEST", "GenerationResult", "generate", "plan_images", "reproduce"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    output_dir: Path
    manifest: Path
    gallery: Path
    contact_sheets: list[Path]
    generated: int
    skipped: int
    model_version: str


def expand_settings(brand: BrandSpec, settings: list[str]) -> list[tuple[str, str]]:
    """``(key, phrase)`` per setting: a brand.yaml key maps to its phrase, a phrase stands for itself.

    Raises:
        GenerationError: a one-word value that is not a known key (most likely a typo).
    """
    try:
        out = [brand.setting_phrase(value) for value in settings]
    except ValueError as exc:
        raise GenerationError(str(exc)) from None
    return out or [("prompt", "")]


def job_aspects(brand: BrandSpec, cfg: GenerateConfig) -> list[str | None]:
    """The aspects a job makes each image in: ``cfg.aspects``, else the brand's; ``[None]`` (the sampler's size)
    when the sampler names a width or height, which wins."""
    if cfg.sampler.width is not None or cfg.sampler.height is not None:
        return [None]
    return list(cfg.aspects if cfg.aspects is not None else brand.aspects)


def plan_images(brand: BrandSpec, cfg: GenerateConfig) -> list[dict[str, Any]]:
    """Every image of the job with its prompt, seed, aspect, file and batch, in generation order.

    With one aspect the files are ``<setting>/<nnn>_seed<seed>.png``; with several, each variation is made in
    every aspect and the file names end in the aspect (``..._seed0_2x3.png``).
    """
    prompt, added = brand.ensure_trigger(cfg.prompt)
    if added:
        logger.warning("prompt %r has no trigger token %r; using %r", cfg.prompt, brand.trigger, prompt)
    settings = expand_settings(brand, cfg.settings)
    aspects = job_aspects(brand, cfg)
    total = len(settings) * len(aspects) * cfg.variations
    if total > cfg.max_images:
        shape = f"{len(settings)} settings x {cfg.variations} variations"
        shape += f" x {len(aspects)} aspects" if len(aspects) > 1 else ""
        raise GenerationError(
            f"{shape} = {total} images, over max_images ({cfg.max_images}); lower --variations, use fewer "
            "aspects or raise max_images"
        )
    rows = []
    for key, phrase in settings:
        full = f"{prompt} {phrase}".strip()
        for aspect in aspects:
            tail = f"_{aspect.replace(':', 'x')}" if aspect and len(aspects) > 1 else ""
            for k in range(cfg.variations):
                seed = cfg.seed + k
                rows.append(
                    {
                        "setting": key,
                        "prompt": full,
                        "seed": seed,
                        "aspect": aspect,
                        "file": f"{key}/{k:03d}_seed{seed}{tail}.png",
                    }
                )
    return rows


def _resolve_model(
    brand: BrandSpec, cfg: GenerateConfig, settings: Settings, placement: Placement
) -> tuple[dict[str, str], Callable[[], Any]]:
    """The model a job uses, as recorded in its manifest, and a loader for its pipeline on ``placement``'s device
    and dtype (called only after the caller has checked the record). An alias is resolved once: the pipeline loads
    the version it resolved to."""
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.registry import fetch, load_pipeline, model_uri

    where = {"device": placement.device, "dtype": placement.dtype}
    if cfg.model == "base":
        resolved = resolve_base(brand.base_model, settings=settings)
        info = {
            "model": "base",
            "version": "",
            "base_model": resolved.name,
            "base_revision": resolved.revision,
            **where,
        }
        return info, lambda: load_base_pipeline(
            resolved, torch_dtype=placement.torch_dtype(), device=placement.device
        )
    uri = model_uri(brand.name, cfg.model)
    try:
        adapter = fetch(uri, settings=settings)
    except RegistryError as exc:
        if cfg.model.lstrip("@") == "champion":
            raise GenerationError(
                f"brand {brand.name} has no usable @champion ({exc}). Run `brandtune retrain --brand {brand.name}` "
                f"or promote a version: `brandtune promote {brand.name} --version N`"
            ) from exc
        raise
    info = {
        "model": uri,
        "version": adapter.version.version,
        # the registry's tags first: the cached brandtune.json is a copy anyone can edit
        "base_model": adapter.version.base_model or adapter.base_model,
        "base_revision": adapter.version.base_revision or adapter.base_revision,
        "adapter_sha256": adapter.sha256,
        **where,
    }
    return info, lambda: load_pipeline(
        adapter.version.uri, device=placement.device, dtype=placement.dtype, fuse=cfg.fuse, settings=settings
    )


def _batches(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """The job's pipeline calls: ``size`` rows at a time, in order, each within one aspect (one image size)."""
    out: list[list[dict[str, Any]]] = []
    for row in rows:
        if out and len(out[-1]) < size and out[-1][0]["aspect"] == row["aspect"]:
            out[-1].append(row)
        else:
            out.append([row])
    return out


def _init_image(cfg: GenerateConfig) -> Image.Image | None:
    if cfg.init_image is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(cfg.init_image) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise GenerationError(f"--init-image {cfg.init_image}: not a readable image ({exc})") from exc


def _campaign_dir(config: GenerateConfig, brand: BrandSpec, settings: Settings) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return config.output_dir or settings.home / "campaigns" / brand.name / f"{stamp}-{slugify(config.prompt)}"


def _previous_manifest(out: Path, rows: list[dict[str, Any]], overwrite: bool) -> Manifest | None:
    """The output folder's manifest, checked as untrusted input; ``None`` for a new folder or ``overwrite``.

    Raises:
        GenerationError: the manifest is malformed, or a planned image path leads out of the folder (a symlink).
    """
    for row in rows:
        if resolve_inside(out, row["file"]) is None:
            raise GenerationError(
                f"--output {out}: {row['file']} resolves outside the folder (a symlink?); use another --output"
            )
    if overwrite or not (out / MANIFEST).is_file():
        return None
    hint = "restore or delete it, or use a new --output, or --overwrite to make every image again"
    return read_manifest(out / MANIFEST, out, hint=hint)


def _make_batch(
    pipe: Any,
    out: Path,
    batch: list[dict[str, Any]],
    missing: set[str],
    shaped: SamplerConfig,
    init: Image.Image | None,
    strength: float,
) -> dict[str, dict[str, Any]]:
    """Run one pipeline call and write its ``missing`` images; their manifest entries, each with its sha256."""
    images = sample_batch(
        pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch], shaped, init, strength
    )
    batch_record = {"prompts": [r["prompt"] for r in batch], "seeds": [r["seed"] for r in batch]}
    size = {"width": shaped.width, "height": shaped.height, "size": [shaped.width, shaped.height]}
    made = {}
    for i, (row, image) in enumerate(zip(batch, images, strict=True)):
        if row["file"] in missing:
            sha = write_png(image, out / row["file"])  # on disk and fsynced before its entry exists
            made[row["file"]] = {**row, **size, "batch": {**batch_record, "index": i}, "sha256": sha}
    return made


def generate(
    config: GenerateConfig,
    settings: Settings | None = None,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> GenerationResult:
    """Run a campaign job, resuming one in the same output folder.

    On a resume an image counts as done only if its file's sha256 matches its manifest entry; any other image
    (truncated, changed, or written but never recorded because the job was killed) is made again, and logged. The
    folder's manifest is untrusted input, checked before anything is written; a job whose model, adapter, base
    revision, sampler, device or dtype differ from the manifest's is refused (``overwrite``: make every image
    again instead). The pipeline runs on ``config.device`` in ``config.dtype`` (``auto``: the GPU when there is
    one, :func:`~brandtune.config.resolve_placement`); the manifest records the resolved pair.

    Raises:
        ConfigError: ``device: cuda`` where no CUDA GPU is visible (before anything is loaded or written).
        GenerationError: a bad job, a malformed manifest in the output folder, or other settings than its images'.
    """
    from tqdm.auto import tqdm

    from brandtune.gallery import write_contact_sheets, write_gallery

    placement = resolve_placement(config.device, config.dtype)  # before anything is loaded or written
    settings = settings or Settings.from_env()
    brand = load_brand(config.brand)
    config = config.model_copy(update={"brand": brand.name})  # the manifest names the brand by its slug
    rows = plan_images(brand, config)
    out = _campaign_dir(config, brand, settings)
    previous = _previous_manifest(out, rows, overwrite)
    check_same_images(out, previous, rows)
    init = _init_image(config)
    info, load = _resolve_model(brand, config, settings, placement)
    logger.info("generating on %s", placement)
    pipe = load()
    sizes = dict(aspect_samplers(pipe, config.sampler, job_aspects(brand, config)))
    sampler = apply_scheduler(pipe, config.sampler)
    config = config.model_copy(update={"sampler": sampler})  # every empty setting filled for this model
    if previous is not None:
        check_same_job(out, previous, config, sampler, info)
    out.mkdir(parents=True, exist_ok=True)  # nothing is written before every check has passed
    remove_stale_temps(out, [r["file"] for r in rows])
    entries = verified_entries(out, rows, previous)
    todo = [r for r in rows if r["file"] not in entries]
    bar = tqdm(total=len(rows), initial=len(entries), desc="generate", unit="img", disable=not progress)
    missing = {r["file"] for r in todo}
    # The job's batches are fixed by its rows and batch_size; a batch with a missing image is run whole, so a
    # resumed image is made in the same batch as the first time and comes out bit for bit the same (CPU and GPU
    # kernels may round differently for another batch size). Verified images are not rewritten.
    for batch in _batches(rows, config.batch_size):
        if not missing.intersection(r["file"] for r in batch):
            continue
        shaped = resolve_sampler(sizes[batch[0]["aspect"]], pipe)
        made = _make_batch(pipe, out, batch, missing, shaped, init, config.strength)
        entries.update(made)
        bar.update(len(made))
        write_manifest(out, config, sampler, info, [entries[r["file"]] for r in rows if r["file"] in entries])
    bar.close()
    manifest = write_manifest(out, config, sampler, info, [entries[r["file"]] for r in rows])
    sheets = write_contact_sheets(out, rows)
    gallery = write_gallery(out, brand, config, info, rows, sheets)
    logger.info("campaign: %d generated, %d skipped, in %s", len(todo), len(rows) - len(todo), out)
    return GenerationResult(out, manifest, gallery, sheets, len(todo), len(rows) - len(todo), info["version"])


def _manifest_brand(recorded: str, given: str | Path | None, manifest: Path) -> BrandSpec:
    """The brand a manifest was made for; ``given`` (a slug or a brand.yaml/folder path) must be that brand.

    Raises:
        GenerationError: ``given`` names another brand.
    """
    from brandtune.config import SLUG_RE

    if given is None or str(given) == recorded:
        return load_brand(recorded)
    is_path = not SLUG_RE.match(str(given)) or Path(given).is_dir()
    spec = load_brand(given) if is_path else None
    if spec is None or spec.name != recorded:
        named = f"{given!s} (brand {spec.name!r})" if spec is not None else repr(str(given))
        raise GenerationError(
            f"--brand {named} does not match brand {recorded!r} recorded in {manifest}; drop --brand (the "
            f"manifest names its brand) or give {recorded!r}"
        )
    return spec


def _recorded_placement(manifest: Path, data: Manifest) -> Placement:
    """The device and dtype a manifest's images were made with (cpu/float32 for a manifest older than the record).

    Raises:
        GenerationError: they were made on a CUDA GPU and none is visible here (or it has no native bf16).
    """
    from brandtune.errors import ConfigError

    device, dtype = data.model.device, data.model.dtype
    try:
        return resolve_placement(device, dtype)
    except ConfigError:
        raise GenerationError(
            f"--reproduce {manifest}: its images were made on {device} in {dtype}, which this machine cannot run "
            "(no CUDA GPU visible, or no native bf16 on it); reproduce them on a machine like the one that made them"
        ) from None


def reproduce(
    manifest: Path,
    output_dir: Path,
    settings: Settings | None = None,
    only: list[str] | None = None,
    brand: str | Path | None = None,
) -> list[Path]:
    """Make the images of a manifest again into ``output_dir`` (``only``: a subset of their file names).

    Each image's whole batch is re-run with the recorded prompts, seeds and sampler, on the recorded device and
    dtype, so the pixels are identical on the same hardware and software. The manifest names the brand, adapter
    version and sampler, so it is all that is needed; the manifest is untrusted input (see
    :func:`~brandtune.generation_manifest.read_manifest`).

    Args:
        manifest: A campaign's ``manifest.json``.
        output_dir: Folder to write the images into, at their recorded relative paths.
        settings: Tracking URI and home; read from the environment when omitted.
        only: File names (as in the manifest) to make again; all when omitted.
        brand: Optional: the brand (slug or brand.yaml path) the caller expects; it must be the manifest's.

    Raises:
        GenerationError: a malformed or tampered manifest, or ``brand`` is not the manifest's brand.
    """
    import json

    hint = "use the manifest.json brandtune wrote, or remove that entry"
    if not Path(manifest).exists():
        raise GenerationError(f"--reproduce {manifest}: no such file; give a campaign's manifest.json")
    data = read_manifest(Path(manifest), Path(output_dir), hint=hint)
    spec = _manifest_brand(data.job.brand, brand, manifest)
    cfg, sampler = data.job, data.sampler
    placement = _recorded_placement(Path(manifest), data)
    settings = settings or Settings.from_env()
    info, load = _resolve_model(
        spec, cfg.model_copy(update={"model": data.model.version or "base"}), settings, placement
    )
    check_reproduce_model(Path(manifest), data.model, info)
    pipe = load()
    apply_scheduler(pipe, sampler)
    init = _init_image(cfg)
    wanted = [e for e in data.images if only is None or e.file in only]
    written, done = [], {}
    for entry in wanted:
        size = {"width": entry.width or sampler.width, "height": entry.height or sampler.height}
        key = json.dumps([entry.batch.prompts, entry.batch.seeds, size])
        if key not in done:
            shaped = sampler.model_copy(update=size)
            done[key] = sample_batch(pipe, entry.batch.prompts, entry.batch.seeds, shaped, init, cfg.strength)
        path = Path(output_dir) / entry.file
        sha = write_png(done[key][entry.batch.index], path)
        if entry.sha256 and sha != entry.sha256:
            logger.warning("%s: sha256 %s differs from the recorded %s (other hardware or software?)", path, sha,
                           entry.sha256)  # fmt: skip
        written.append(path)
    return written
