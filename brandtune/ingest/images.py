"""Validating and normalising one photo: the work each ingest worker process does.

Decoding is bounded before any pixel is read (declared size checked against the decompression-bomb limit);
EXIF orientation is applied; CMYK, 16-bit, palette and alpha images are converted to 8-bit sRGB RGB (alpha is
composited on the configured background); the result is resized to the training resolution: by default at its own
aspect ratio (``crop: keep``, about ``resolution**2`` pixels), else cropped or padded to a square. The photo's mask
(:mod:`brandtune.ingest.masks`) goes through exactly the same resize, LANCZOS, soft edges kept as 8-bit levels.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from brandtune.config import IngestConfig
from brandtune.ingest.masks import PRODUCT_LEVEL, MaskChoice, choose_mask

PNG_COMPRESS_LEVEL = 6
MAX_PHOTO_BYTES = 256 << 20  # a photo file (or archive member) larger than this is refused unread
EXIF_ORIENTATION = 0x0112
PHASH_SIZE, PHASH_BITS = 32, 8


@dataclass
class Accepted:
    """A photo that passed validation; its normalised PNG is at ``tmp_path``."""

    index: int
    tmp_path: Path
    source_sha256: str
    pixels_sha256: str  # hash of the normalised RGB pixels: what the fingerprint covers
    file_sha256: str  # hash of the written PNG file: what integrity checks use
    phash: int  # 64-bit perceptual hash of the oriented, converted photo
    width: int  # oriented size before resizing
    height: int
    format: str
    notes: list[str] = field(default_factory=list)
    mask_tmp_path: Path | None = None  # the normalised mask PNG, same size as the image
    mask_source: str | None = None  # "file", "alpha" or "auto"
    mask_pixels_sha256: str | None = None  # hash of the mask's bytes: what the fingerprint covers
    mask_file_sha256: str | None = None
    mask_coverage: float | None = None  # mean mask level / 255: the product's share of the image
    mask_note: str | None = None  # "no mask: ..." when there is none
    mask_problem: tuple[str, str] | None = None  # (reason code, detail) of a bad mask file
    mask_detail: str | None = None  # the measurement behind an automatic mask or its refusal


@dataclass
class Rejected:
    index: int
    reason: str  # a stable code: not_an_image, corrupt, too_small, ...
    detail: str  # a sentence a person understands


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _to_srgb(img: Image.Image, notes: list[str], background: str) -> tuple[Image.Image, Image.Image | None]:
    """Convert any PIL mode to 8-bit RGB, honouring an embedded ICC profile and transparency.

    Returns:
        The RGB image and, for an image with transparency, its alpha channel ("L", the same size).
    """
    alpha = None
    icc = img.info.get("icc_profile")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        notes.append("converted from 16-bit to 8-bit")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        base = Image.new("RGBA", rgba.size, (*_hex_to_rgb(background), 255))
        img = Image.alpha_composite(base, rgba).convert("RGB")
        notes.append(f"transparency composited on {background}")
    elif icc and img.mode in ("RGB", "CMYK"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            img = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
            notes.append("colour profile converted to sRGB")
        except (ImageCms.PyCMSError, OSError):
            notes.append("embedded colour profile unreadable; converted without it")
    if img.mode == "CMYK":
        notes.append("converted from CMYK")
    elif img.mode == "P":
        notes.append("converted from palette colours")
    return (img if img.mode == "RGB" else img.convert("RGB")), alpha


def keep_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The size ``crop: keep`` gives a ``width`` x ``height`` photo: its aspect ratio, about resolution**2 pixels."""
    root = (width / height) ** 0.5
    return max(1, round(resolution * root)), max(1, round(resolution / root))


def _normalise(
    img: Image.Image, shown: tuple[int, int], cfg: IngestConfig, fill: int | tuple[int, ...]
) -> Image.Image:
    """Resize (and crop or pad) to the training resolution; a mask given the same ``shown`` size and settings
    gets exactly the image's geometry (``fill`` is the padding: the background colour, or 0 for a mask)."""
    size = cfg.resolution
    if cfg.crop == "keep":
        return img.resize(keep_size(*shown, size), Image.Resampling.LANCZOS)
    if cfg.crop == "center":
        return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return ImageOps.pad(img, (size, size), Image.Resampling.LANCZOS, color=fill)


@functools.cache
def _dct_rows(size: int = PHASH_SIZE, keep: int = PHASH_BITS) -> np.ndarray:
    """The first ``keep`` rows of the (unnormalised) DCT-II matrix of order ``size``."""
    k = np.arange(keep)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


def _phash(img: Image.Image) -> int:
    """64-bit perceptual hash: the sign pattern of the 8x8 lowest DCT frequencies of a 32x32 grey copy
    around their median (the imagehash ``phash`` algorithm, with the DCT as two small matrix products so a worker
    process need not import scipy)."""
    grey = np.asarray(
        img.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS), dtype=np.float64
    )
    d = _dct_rows()
    low = d @ grey @ d.T  # (8, 8)
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def process_photo(
    index: int, path: Path, out_dir: Path, cfg: IngestConfig, mask_file: Path | None = None
) -> Accepted | Rejected:
    """Validate and normalise one photo, writing ``<out_dir>/<index>.png`` (and ``<index>.mask.png`` when it has
    a mask) when it is accepted.

    Args:
        index: The photo's number in the ingest (names its files, and its report entries).
        path: The photo.
        out_dir: Where the normalised files go.
        cfg: Ingest settings.
        mask_file: The photo's mask file, if one lies beside it.
    """
    try:
        with open(path, "rb") as handle:
            # never more than the cap, whatever the file claims; sized by the file, since read(n) allocates n bytes
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(min(size, MAX_PHOTO_BYTES) + 1)
    except OSError as exc:
        return Rejected(index, "unreadable", f"cannot read the file: {exc.strerror or exc}")
    if len(data) > MAX_PHOTO_BYTES:
        return Rejected(
            index, "too_large", f"the file is over {MAX_PHOTO_BYTES >> 20} MiB; export a smaller copy"
        )
    source_sha = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if (rejected := _check_declared_size(index, img, cfg)) is not None:
                return rejected
            fmt = img.format or "unknown"
            loaded = _load_oriented(index, img, fmt, cfg, notes)
            if isinstance(loaded, Rejected):
                return loaded
            img, width, height = loaded
            rgb, alpha = _to_srgb(img, notes, cfg.background)
    except Image.DecompressionBombError as exc:
        return Rejected(index, "decompression_bomb", str(exc))
    except UnidentifiedImageError:
        return Rejected(index, "not_an_image", "not an image (no known image format recognised)")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return Rejected(index, kind, f"the image data is {kind}: {exc}")

    phash = _phash(rgb)
    out = _normalise(rgb, (width, height), cfg, _hex_to_rgb(cfg.background))
    tmp_path, pixels_sha, file_sha = _write_png(out, out_dir / f"{index:06d}.png")
    accepted = Accepted(
        index=index,
        tmp_path=tmp_path,
        source_sha256=source_sha,
        pixels_sha256=pixels_sha,
        file_sha256=file_sha,
        phash=phash,
        width=width,
        height=height,
        format=fmt,
        notes=notes,
    )
    choice = choose_mask(rgb, alpha, mask_file, (width, height), cfg)
    _add_mask(accepted, choice, (width, height), out_dir / f"{index:06d}.mask.png", cfg)
    return accepted


def _add_mask(
    accepted: Accepted, choice: MaskChoice, shown: tuple[int, int], tmp: Path, cfg: IngestConfig
) -> None:
    """Normalise the chosen mask like its image and write it; or record why the photo has none."""
    accepted.mask_note, accepted.mask_problem, accepted.mask_detail = (
        choice.note,
        choice.problem,
        choice.detail,
    )
    if choice.mask is None:
        return
    mask = _normalise(choice.mask, shown, cfg, 0)
    levels = np.asarray(mask)
    if not (levels >= PRODUCT_LEVEL).any():  # e.g. a product outside the centre crop
        accepted.mask_note = "no mask: no product pixel left after resizing"
        if choice.source == "file":
            accepted.mask_note = "no mask: bad mask file (mask_empty)"
            accepted.mask_problem = ("mask_empty", f"no product pixel left at {mask.width}x{mask.height}")
        return
    path, pixels_sha, file_sha = _write_png(mask, tmp)
    accepted.mask_tmp_path, accepted.mask_source = path, choice.source
    accepted.mask_pixels_sha256, accepted.mask_file_sha256 = pixels_sha, file_sha
    accepted.mask_coverage = round(float(levels.mean()) / 255.0, 4)


def _check_declared_size(index: int, img: Image.Image, cfg: IngestConfig) -> Rejected | None:
    """Reject on the size the header declares, before any pixel is decoded: bombs, tiny and extreme shapes."""
    width, height = img.size
    if width * height > cfg.max_pixels:
        return Rejected(
            index,
            "decompression_bomb",
            f"declares {width}x{height} = {width * height:,} pixels, over the limit of {cfg.max_pixels:,}",
        )
    short, long = min(width, height), max(width, height)
    if short < cfg.effective_min_side:
        return Rejected(
            index,
            "too_small",
            f"{width}x{height}: shorter side {short}px is below {cfg.effective_min_side}px",
        )
    if long / short > cfg.max_aspect:
        return Rejected(
            index,
            "extreme_aspect",
            f"{width}x{height}: aspect ratio {long / short:.2f} exceeds {cfg.max_aspect:g}",
        )
    return None


def _load_oriented(
    index: int, img: Image.Image, fmt: str, cfg: IngestConfig, notes: list[str]
) -> tuple[Image.Image, int, int] | Rejected:
    """Decode the first frame (JPEGs drafted down to >= 2x the resolution) and apply the EXIF orientation.

    Returns:
        The upright image and its size as shown (before any draft downscale), or the rejection of an animation.
    """
    width, height = img.size
    # is_animated looks for a second frame only; n_frames would walk every frame of a file that may hold millions
    if getattr(img, "is_animated", False):
        if cfg.animated == "reject":
            return Rejected(index, "animated", f"animated {fmt} (more than one frame)")
        img.seek(0)
        notes.append(f"animated {fmt}: first frame used")
    if fmt == "JPEG":
        # Let the JPEG decoder downscale by a power of two while keeping >= 2x the output size.
        scale = 2 * cfg.resolution / min(width, height)
        if scale < 0.5:
            img.draft(img.mode, (int(width * scale) + 1, int(height * scale) + 1))
    img.load()
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width  # the photo is shown rotated by 90 degrees
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        notes.append(f"EXIF orientation {orientation} applied")
    return img, width, height


def _write_png(out: Image.Image, tmp_path: Path) -> tuple[Path, str, str]:
    """Write the PNG; returns its path, pixels sha256 and file sha256."""
    pixels_sha = hashlib.sha256(out.tobytes()).hexdigest()
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    encoded = buf.getvalue()
    tmp_path.write_bytes(encoded)
    return tmp_path, pixels_sha, hashlib.sha256(encoded).hexdigest()
