"""Campaign generation: one prompt x several settings x N variations, from a registered adapter.

A job writes ``<output>/<setting>/<nnn>_seed<seed>.png``, one contact sheet per setting, an ``index.html`` gallery
and ``manifest.json``. The manifest lists, for every image, the prompt, negative prompt, seed, sampler, size,
adapter version and base model, and the batch it was generated in, so ``reproduce`` makes it again bit for bit on
the same hardware. Re-running a job skips images that already exist (every image is written atomically).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from brandtune.config import BrandSpec, GenerateConfig, SamplerConfig, load_brand
from brandtune.config._base import slugify
from brandtune.errors import GenerationError, RegistryError
from brandtune.fsutil import atomic_write_json
from brandtune.images import save_png
from brandtune.provenance import brandtune_version
from brandtune.sampling import apply_scheduler, aspect_samplers, resolve_sampler, sample_batch
from brandtune.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


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


def _load(brand: BrandSpec, cfg: GenerateConfig, settings: Settings) -> tuple[Any, dict[str, str]]:
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.registry import fetch, load_pipeline, model_uri

    if cfg.model == "base":
        resolved = resolve_base(brand.base_model, settings=settings)
        info = {
            "model": "base",
            "version": "",
            "base_model": resolved.name,
            "base_revision": resolved.revision,
        }
        return load_base_pipeline(resolved), info
    uri = model_uri(brand.name, cfg.model)
    try:
        adapter = fetch(uri, settings=settings)
        pipe = load_pipeline(uri, fuse=cfg.fuse, settings=settings)
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
        "base_model": adapter.base_model,
        "base_revision": adapter.base_revision,
        "adapter_sha256": adapter.sha256,
    }
    return pipe, info


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


def generate(
    config: GenerateConfig, settings: Settings | None = None, progress: bool = True
) -> GenerationResult:
    """Run a campaign job; images already on disk are skipped, so an interrupted job can simply be re-run."""
    from tqdm.auto import tqdm

    from brandtune.gallery import write_contact_sheets, write_gallery

    settings = settings or Settings.from_env()
    brand = load_brand(config.brand)
    config = config.model_copy(update={"brand": brand.name})  # the manifest names the brand by its slug
    rows = plan_images(brand, config)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = config.output_dir or settings.home / "campaigns" / brand.name / f"{stamp}-{slugify(config.prompt)}"
    out.mkdir(parents=True, exist_ok=True)
    init = _init_image(config)
    todo = [r for r in rows if not (out / r["file"]).is_file()]
    pipe, info = _load(brand, config, settings)
    sizes = dict(aspect_samplers(pipe, config.sampler, job_aspects(brand, config)))
    sampler = apply_scheduler(pipe, config.sampler)
    config = config.model_copy(update={"sampler": sampler})  # every empty setting filled for this model
    previous = _read_manifest(out)
    entries = {e["file"]: e for e in previous.get("images", [])}
    bar = tqdm(
        total=len(rows), initial=len(rows) - len(todo), desc="generate", unit="img", disable=not progress
    )
    missing = {r["file"] for r in todo}
    # The job's batches are fixed by its rows and batch_size; a batch with a missing image is run whole, so a
    # resumed image is made in the same batch as the first time and comes out bit for bit the same (CPU and GPU
    # kernels may round differently for another batch size). Images already on disk are not rewritten.
    for batch in _batches(rows, config.batch_size):
        if not missing.intersection(r["file"] for r in batch):
            continue
        shaped = resolve_sampler(sizes[batch[0]["aspect"]], pipe)
        images = sample_batch(
            pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch], shaped, init, config.strength
        )
        batch_record = {"prompts": [r["prompt"] for r in batch], "seeds": [r["seed"] for r in batch]}
        size = {"width": shaped.width, "height": shaped.height, "size": [shaped.width, shaped.height]}
        for i, (row, image) in enumerate(zip(batch, images, strict=True)):
            if row["file"] in missing:
                save_png(image, out / row["file"])
                entries[row["file"]] = {**row, **size, "batch": {**batch_record, "index": i}}
                bar.update(1)
        _write_manifest(
            out, config, sampler, info, [entries[r["file"]] for r in rows if r["file"] in entries]
        )
    bar.close()
    manifest = _write_manifest(
        out, config, sampler, info, [entries[r["file"]] for r in rows if r["file"] in entries]
    )
    sheets = write_contact_sheets(out, rows)
    gallery = write_gallery(out, brand, config, info, rows, sheets)
    logger.info("campaign: %d generated, %d skipped, in %s", len(todo), len(rows) - len(todo), out)
    return GenerationResult(out, manifest, gallery, sheets, len(todo), len(rows) - len(todo), info["version"])


def _read_manifest(out: Path) -> dict[str, Any]:
    import json

    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(
    out: Path, cfg: GenerateConfig, sampler: SamplerConfig, info: dict[str, str], images: list[dict[str, Any]]
) -> Path:
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
    atomic_write_json(out / MANIFEST, data)
    return out / MANIFEST


class _ManifestBatch(BaseModel):
    """The pipeline call an image came from: every prompt and seed of it, and the image's place in it."""

    prompts: list[str] = Field(min_length=1, max_length=64, description="Prompts of the batch, in order.")
    seeds: list[int] = Field(min_length=1, max_length=64, description="Seeds of the batch, in order.")
    index: int = Field(ge=0, description="The image's position in the batch.")


class _ManifestImage(BaseModel):
    """One image of a manifest, as far as ``reproduce`` reads it (other keys are informative)."""

    file: str = Field(description="PNG path relative to the campaign folder.")
    prompt: str | None = Field(default=None, description="The image's prompt (must match its batch entry).")
    seed: int | None = Field(default=None, description="The image's seed (must match its batch entry).")
    batch: _ManifestBatch = Field(description="The batch the image was generated in.")
    width: int | None = Field(default=None, ge=32, le=4096, description="Width in px; empty: the sampler's.")
    height: int | None = Field(
        default=None, ge=32, le=4096, description="Height in px; empty: the sampler's."
    )


class _ManifestModel(BaseModel):
    version: str = Field(
        pattern=r"^\d*$", description="Registered adapter version; empty for the base model."
    )


class _Manifest(BaseModel):
    """What ``reproduce`` needs of a manifest.json: the job, the sampler, the adapter version, the images."""

    job: GenerateConfig = Field(description="The job as it was run.")
    sampler: SamplerConfig = Field(description="The sampler with the size it used.")
    model: _ManifestModel = Field(description="The adapter the images came from.")
    images: list[_ManifestImage] = Field(description="Every image of the job.")


def _read_untrusted_manifest(manifest: Path, output_dir: Path) -> _Manifest:
    """Parse and check a manifest.json for ``reproduce``: well-formed, a brand slug, and every image file a PNG
    path that stays inside ``output_dir`` (a manifest may come from anywhere).

    Raises:
        GenerationError: the file is missing or malformed, or an entry points outside the output folder.
    """
    import json

    from pydantic import ValidationError

    from brandtune.config import SLUG_RE, format_validation_error

    try:
        data = _Manifest.model_validate(json.loads(Path(manifest).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise GenerationError(
            f"--reproduce {manifest}: no such file; give a campaign's manifest.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenerationError(f"--reproduce {manifest}: not a readable JSON manifest ({exc})") from exc
    except ValidationError as exc:
        raise GenerationError(format_validation_error(exc, str(manifest))) from exc
    if not SLUG_RE.match(data.job.brand):
        raise GenerationError(f"{manifest}: brand {data.job.brand!r} is not a brand slug such as 'acme'")
    if len(data.images) > data.job.max_images:
        raise GenerationError(
            f"{manifest}: {len(data.images)} images, over its max_images ({data.job.max_images})"
        )
    root = Path(output_dir).resolve()
    for entry in data.images:
        rel = PurePosixPath(entry.file)
        target = (root / rel).resolve()
        if rel.is_absolute() or ".." in rel.parts or rel.suffix != ".png" or not target.is_relative_to(root):
            raise GenerationError(
                f"{manifest}: image file {entry.file!r} is not a .png path inside the output folder; "
                "the manifest was edited or is not a brandtune manifest"
            )
        batch = entry.batch
        if len(batch.prompts) != len(batch.seeds) or batch.index >= len(batch.prompts):
            raise GenerationError(
                f"{manifest}: {entry.file}: its batch record is inconsistent (prompts/seeds/index)"
            )
        prompt, seed = batch.prompts[batch.index], batch.seeds[batch.index]
        if entry.prompt not in (None, prompt) or entry.seed not in (None, seed):
            raise GenerationError(
                f"{manifest}: {entry.file}: its prompt and seed differ from its batch record"
            )
    return data


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


def reproduce(
    manifest: Path,
    output_dir: Path,
    settings: Settings | None = None,
    only: list[str] | None = None,
    brand: str | Path | None = None,
) -> list[Path]:
    """Make the images of a manifest again into ``output_dir`` (``only``: a subset of their file names).

    Each image's whole batch is re-run with the recorded prompts, seeds and sampler, so the pixels are identical
    on the same hardware and software. The manifest names the brand, adapter version and sampler, so it is all
    that is needed; the manifest is untrusted input (see :func:`_read_untrusted_manifest`).

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

    data = _read_untrusted_manifest(manifest, output_dir)
    spec = _manifest_brand(data.job.brand, brand, manifest)
    cfg, sampler = data.job, data.sampler
    settings = settings or Settings.from_env()
    pipe, _ = _load(spec, cfg.model_copy(update={"model": data.model.version or "base"}), settings)
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
        save_png(done[key][entry.batch.index], path)
        written.append(path)
    return written
