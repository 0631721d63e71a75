"""Training data: reading a dataset folder, encoding it once, and caching the result on disk.

The cache holds VAE latent distributions (mean and std, so every step still samples fresh latents), the
family's text conditioning and, for a masked loss, the product masks at the latent grid. Its key covers everything the
encoded values depend on: dataset fingerprint (which covers every pixel and caption), base-model revision,
resolution, flip augmentation, family, whether the text encoder is trained and the mask files' bytes (when the loss
uses masks). Change any of them and a new cache is made; the old one is never read for the new inputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brandtune.errors import IngestError, TrainingError
from brandtune.faults import fault_point
from brandtune.fsutil import canonical_json, fsync_dir, sha256_bytes
from brandtune.ingest.layout import DatasetImage, dataset_images

if TYPE_CHECKING:
    import torch

    from brandtune.config import TrainConfig
    from brandtune.doctor import Finding
    from brandtune.models import BaseComponents
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: conditioning by name (FLUX, SD3), latents shifted as well as scaled


#: One training image: a dataset image (its file, caption, original size and mask).
Example = DatasetImage


def read_dataset(folder: Path) -> list[Example]:
    """The images, captions and masks of a dataset folder (:func:`~brandtune.ingest.layout.dataset_images`).

    Raises:
        TrainingError: the folder is not a complete dataset, a listed file is missing or outside it, or it holds
            no image.
    """
    try:
        examples = dataset_images(folder)
    except IngestError as exc:
        raise TrainingError(str(exc)) from exc
    if not examples:
        raise TrainingError(f"dataset {folder} holds no images; ingest photos first")
    return examples


def masks_key(examples: list[Example]) -> str | None:
    """A digest of the examples' mask files (which example has which mask bytes); None when none has a mask."""
    if not any(ex.mask for ex in examples):
        return None
    parts = [sha256_bytes(ex.mask.read_bytes()) if ex.mask else None for ex in examples]
    return sha256_bytes(canonical_json(parts).encode())


@dataclass
class Encoded:
    """Encoded training examples, all tensors on the CPU, first dimension = example.

    Attributes:
        latent_mean: ``(N, C, h, w)`` VAE latent means, shifted and scaled as the denoiser takes them.
        latent_std: ``(N, C, h, w)`` the latent distributions' std, scaled alike.
        conditioning: What the denoiser is conditioned on, per example, as the family's
            :class:`~brandtune.training.families.FamilyOps` made it: ``prompt_embeds`` (absent when the text
            encoders are trained; then ``input_ids``, ``(N, E, L)``, are run each step), ``pooled_embeds`` (SDXL,
            FLUX, SD3), ``time_ids`` (SDXL micro-conditioning).
        mask: ``(N, 1, h, w)`` the product masks at the latent grid, in [0, 1] (1: product; all ones for an
            example without a mask); None when the loss uses no masks.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    conditioning: dict[str, torch.Tensor]
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        mask = {} if self.mask is None else {"mask": self.mask}
        return {"latent_mean": self.latent_mean, "latent_std": self.latent_std, **mask, **self.conditioning}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Encoded:
        rest = {k: v for k, v in tensors.items() if k not in {"latent_mean", "latent_std", "mask"}}
        return cls(tensors["latent_mean"], tensors["latent_std"], rest, tensors.get("mask"))


def cache_key(**parts: object) -> str:
    return sha256_bytes(canonical_json({"v": CACHE_VERSION, **parts}).encode())[:24]


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def _load_pixels(examples: list[Example], size: int | tuple[int, int], flip: bool) -> torch.Tensor:
    """The images at ``size`` (px, or (width, height)): resized to cover it and centre-cropped, maybe mirrored."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    size = _size(size)
    arrays = []
    for ex in examples:
        with Image.open(ex.file) as img:
            img = img.convert("RGB")
            if img.size != size:
                img = ImageOps.fit(img, size, Image.Resampling.LANCZOS)
            if flip:
                img = ImageOps.mirror(img)
            arrays.append(np.asarray(img, dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    return pixels / 127.5 - 1.0


def load_mask(ex: Example, size: int | tuple[int, int], flip: bool, grid: tuple[int, int]) -> torch.Tensor:
    """``ex``'s mask, cropped and resized exactly as its image is, mirrored with it, then area-downsampled to the
    latent ``grid`` (h, w): ``(1, 1, h, w)`` in [0, 1]; all ones for an example without a mask."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    if ex.mask is None:
        return torch.ones(1, 1, *grid)
    with Image.open(ex.mask) as img:
        img = img.convert("L")
        with Image.open(ex.file) as photo:
            if img.size != photo.size:  # ingest writes masks at the image's size; stretch one that is not
                img = img.resize(photo.size, Image.Resampling.BILINEAR)
        size = _size(size)
        if img.size != size:  # the same crop box as the image's (ImageOps.fit, centred)
            img = ImageOps.fit(img, size, Image.Resampling.BILINEAR)
        if flip:
            img = ImageOps.mirror(img)
        mask = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    return F.interpolate(mask, size=grid, mode="area").clamp_(0.0, 1.0)


def _time_ids(ex: Example, size: tuple[int, int]) -> list[float]:
    """SDXL micro-conditioning: original size, crop top-left, target size (height first), from what covering the
    target ``size`` (width, height) and centre-cropping does to the original photo."""
    tw, th = size
    w, h = (ex.width, ex.height) if ex.width and ex.height else size
    scale = max(tw / w, th / h)
    top = round((h * scale - th) / 2)
    left = round((w * scale - tw) / 2)
    return [h, w, top, left, th, tw]


def encode_examples(
    components: BaseComponents,
    examples: list[Example],
    resolution: int,
    config: TrainConfig,
    *,
    flip: bool,
    with_text: bool,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    size: tuple[int, int] | None = None,
    masks: bool | None = None,
) -> Encoded:
    """Run the VAE and the family's text conditioning over the examples once; ``flip`` appends mirrored copies.

    Every example is encoded at ``size`` (width, height; default the ``resolution`` square): one bucket. ``masks``:
    whether to encode product masks (default: with ``config.masked_loss`` when an example has one).

    The VAE runs on ``device`` in fp32 (an SD VAE overflows in fp16); where it is when ``device`` is None.
    ``batch_size`` defaults to as many images as make two 512 px ones (at most 8): an SD VAE's fp32 encoder
    activations grow with the pixel count, to several GB per 1024 px image, and the UNet is on the GPU already.
    Latents are ``(mean - shift_factor) * scaling_factor`` (FLUX's and SD3's VAEs have a shift, SD's none).
    """
    import torch

    from brandtune.training.families import family_ops

    size = size or (resolution, resolution)
    if batch_size is None:
        batch_size = min(8, max(1, 2 * 512 * 512 // (size[0] * size[1])))
    vae = components.vae
    if device is not None:
        vae.to(device, dtype=torch.float32)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with_masks = masks if masks is not None else config.masked_loss and any(ex.mask for ex in examples)
    means, stds, grids = [], [], []
    sets = [False, True] if flip else [False]
    rows = [(ex, f) for f in sets for ex in examples]
    ops = family_ops(components.resolved.family)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            pixels = torch.cat([_load_pixels([ex], size, f) for ex, f in chunk])
            dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
            # contiguous: a freshly encoded batch must be laid out exactly like one read back from the cache,
            # or the denoiser's kernels may take another path and results drift in the last bits.
            mean = dist.mean.float().cpu()
            means.append(((mean - shift) * scale if shift else mean * scale).contiguous())
            stds.append((dist.std.float().cpu() * scale).contiguous())
            if with_masks:
                grids += [load_mask(ex, size, f, tuple(mean.shape[-2:])) for ex, f in chunk]
        captions = [ex.caption for ex, _ in rows]
        conditioning = ops.encode_captions(components, captions, config, with_text=with_text)
    if components.resolved.family == "sdxl":
        # Centre crops are symmetric, so mirrored copies share their originals' crop offsets.
        conditioning["time_ids"] = torch.tensor([_time_ids(ex, size) for ex, _ in rows], dtype=torch.float32)
    conditioning = {k: v.contiguous() for k, v in conditioning.items()}
    mask = torch.cat(grids).contiguous() if with_masks else None
    return Encoded(torch.cat(means), torch.cat(stds), conditioning, mask)


def encode_empty_caption(
    components: BaseComponents, config: TrainConfig, *, with_text: bool
) -> dict[str, torch.Tensor]:
    """The empty caption's conditioning, one row, encoded as :func:`encode_examples` encodes captions (token ids,
    and the embeddings unless the text encoders are trained): what caption dropout trains on. Call it before the
    text encoders are freed."""
    import torch

    from brandtune.training.families import family_ops

    with torch.no_grad():
        out = family_ops(components.resolved.family).encode_captions(
            components, [""], config, with_text=with_text
        )
    return {k: v.contiguous() for k, v in out.items()}


def load_or_encode(
    components: BaseComponents,
    examples: list[Example],
    resolution: int,
    cache_file: Path | None,
    config: TrainConfig,
    *,
    flip: bool,
    with_text: bool,
    device: torch.device | str | None = None,
    sizes: list[tuple[int, int]] | None = None,
) -> tuple[list[Encoded], bool]:
    """Encoded examples from ``cache_file`` if it exists, else encode (the VAE on ``device``) and write it atomically.

    ``sizes`` gives each example's training size (width, height; its aspect bucket, default the ``resolution``
    square). The examples are encoded bucket by bucket, in the order of the sorted distinct sizes; a single bucket is
    stored as before buckets (plain tensor names), several with ``<bucket>/`` name prefixes.

    Returns:
        One :class:`Encoded` per bucket and whether the cache was hit.
    """
    rows = len(examples) * (2 if flip else 1)
    if cache_file is not None and (cached := read_cache(cache_file, rows)) is not None:
        logger.info("latent/text cache hit: %s", cache_file.name)
        return cached, True
    sizes = sizes or [(resolution, resolution)] * len(examples)
    masks = config.masked_loss and any(ex.mask for ex in examples)
    encoded = []
    for size in sorted(set(sizes)):
        members = [ex for ex, s in zip(examples, sizes, strict=True) if s == size]
        kwargs = {"flip": flip, "with_text": with_text, "device": device, "size": size, "masks": masks}
        encoded.append(encode_examples(components, members, resolution, config, **kwargs))
    if cache_file is not None:
        write_cache(cache_file, encoded)
    return encoded, False


def write_cache(cache_file: Path, encoded: list[Encoded]) -> None:
    """Write the buckets to ``cache_file`` atomically: a temporary file beside it, flushed, then renamed."""
    from safetensors.torch import save_file

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=cache_file.parent)
    os.close(fd)
    try:
        tensors = {
            (k if len(encoded) == 1 else f"{b}/{k}"): v.contiguous()
            for b, enc in enumerate(encoded)
            for k, v in enc.tensors().items()
        }
        save_file(tensors, tmp, metadata={"brandtune.cache_version": str(CACHE_VERSION)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        fault_point("training.latent_cache_written")
        os.replace(tmp, cache_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(cache_file.parent)
    logger.info("wrote latent/text cache %s", cache_file)


def read_cache(cache_file: Path, rows: int | None = None) -> list[Encoded] | None:
    """The buckets in ``cache_file`` (``rows`` encoded examples in all, when given), or ``None`` when there is none
    or it is unusable.

    A truncated or corrupt file, one of another cache version, or one whose tensors do not make whole buckets
    (missing names, mismatched example counts) is deleted with a WARNING naming it, so the caller encodes again
    instead of failing on it in every retry.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not cache_file.is_file():
        return None
    try:
        buckets = _checked_buckets(cache_file, load_file(cache_file))
        if rows is not None and sum(len(b) for b in buckets) != rows:
            raise ValueError(f"it holds {sum(len(b) for b in buckets)} encoded examples, expected {rows}")
        return buckets
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        logger.warning("latent cache %s is unusable (%s): deleting it and encoding again", cache_file, exc)
        cache_file.unlink(missing_ok=True)
        return None


def _checked_buckets(cache_file: Path, tensors: dict[str, torch.Tensor]) -> list[Encoded]:
    """Split the tensors into buckets and check that each is whole; ValueError/KeyError when not."""
    from safetensors import safe_open

    with safe_open(cache_file, framework="pt") as handle:
        version = (handle.metadata() or {}).get("brandtune.cache_version")
    if version != str(CACHE_VERSION):
        raise ValueError(f"cache version {version}, expected {CACHE_VERSION}")
    buckets = _split_buckets(tensors)
    for number, enc in enumerate(buckets):
        count = len(enc)
        if enc.latent_std.shape != enc.latent_mean.shape or enc.latent_mean.ndim != 4:
            raise ValueError(
                f"bucket {number}: latent mean {tuple(enc.latent_mean.shape)} and std "
                f"{tuple(enc.latent_std.shape)} do not match"
            )
        rows = {k: v.shape[0] for k, v in enc.tensors().items() if v.ndim == 0 or v.shape[0] != count}
        if rows or not enc.conditioning:
            raise ValueError(
                f"bucket {number}: tensors {rows or 'conditioning'} do not hold {count} examples"
            )
    return buckets


def _split_buckets(tensors: dict[str, torch.Tensor]) -> list[Encoded]:
    """The buckets of a cache file's tensors (``<bucket>/<name>``, or plain names for a single bucket)."""
    if not any("/" in k for k in tensors):
        return [Encoded.from_tensors(tensors)]
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        bucket, name = key.split("/", 1)
        groups.setdefault(int(bucket), {})[name] = value
    return [Encoded.from_tensors(groups[b]) for b in sorted(groups)]


#: A temporary cache file older than this was left by a process that died while writing it.
TEMP_STALE_S = 900.0


def safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file is structurally broken (a bad header, a size that is not what its header says), or
    ``None``; reads the header only."""
    import json
    import struct

    try:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size)) if size < (100 << 20) else None
    except (OSError, ValueError, struct.error) as exc:
        return f"its header cannot be read ({exc})"
    if not isinstance(header, dict):
        return "its header is not a safetensors header"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return f"its header is malformed ({exc!r})"
    actual = path.stat().st_size - 8 - size
    return (
        None if actual == end else f"it is truncated or padded ({actual} data bytes, its header says {end})"
    )


def check_latent_cache(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """``brandtune doctor``: latent-cache files that are truncated or broken, and temporary files a killed write
    left (older than :data:`TEMP_STALE_S`). The cache is shared by every brand, so ``brand`` does not narrow it.
    ``fix`` deletes them (a later training encodes again)."""
    import time

    from brandtune.doctor import Finding

    root = settings.cache_dir
    files = [
        *root.glob("latents/*"),
        *root.glob("class_images/*/*.safetensors"),
        *root.glob("class_images/*/.tmp-*"),
    ]
    findings = []
    for path in sorted(p for p in files if p.is_file()):
        if path.name.startswith(".tmp-"):
            if time.time() - path.stat().st_mtime < TEMP_STALE_S:
                continue
            problem: str | None = "a cache write that never finished left this temporary file"
        elif path.suffix == ".safetensors":
            problem = safetensors_damage(path)
        else:
            continue
        if problem is None:
            continue
        if fix:
            path.unlink(missing_ok=True)
        repair = "delete it (the next training encodes the dataset again)"
        findings.append(Finding("latent-cache", str(path), problem, repair, fix))
    return findings
