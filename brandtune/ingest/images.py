"""Validating and normalising one photo: the work each ingest worker process does.

Decoding is bounded before any pixel is read (declared size checked against the decompression-bomb limit);
EXIF orientation is applied; CMYK, 16-bit, palette and alpha images are converted to 8-bit sRGB RGB (alpha is
composited on the configured background); the result is resized and cropped to the training resolution.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from brandtune.config import IngestConfig

PNG_COMPRESS_LEVEL = 6
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


@dataclass
class Rejected:
    index: int
    reason: str  # a stable code: not_an_image, corrupt, too_small, ...
    detail: str  # a sentence a person understands


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _to_srgb(img: Image.Image, notes: list[str], background: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, honouring an embedded ICC profile and transparency."""
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
    return img if img.mode == "RGB" else img.convert("RGB")


def _normalise(img: Image.Image, cfg: IngestConfig) -> Image.Image:
    size = cfg.resolution
    if cfg.crop == "center":
        return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return ImageOps.pad(img, (size, size), Image.Resampling.LANCZOS, color=_hex_to_rgb(cfg.background))


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


def process_photo(index: int, path: Path, out_dir: Path, cfg: IngestConfig) -> Accepted | Rejected:
    """Validate and normalise one photo, writing ``<out_dir>/<index>.png`` when it is accepted."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Rejected(index, "unreadable", f"cannot read the file: {exc.strerror or exc}")
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
            rgb = _to_srgb(img, notes, cfg.background)
    except Image.DecompressionBombError as exc:
        return Rejected(index, "decompression_bomb", str(exc))
    except UnidentifiedImageError:
        return Rejected(index, "not_an_image", "not an image (no known image format recognised)")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return Rejected(index, kind, f"the image data is {kind}: {exc}")

    phash = _phash(rgb)
    tmp_path, pixels_sha, file_sha = _write_normalised(rgb, out_dir / f"{index:06d}.png", cfg)
    return Accepted(
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
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        if cfg.animated == "reject":
            return Rejected(index, "animated", f"animated {fmt} with {img.n_frames} frames")
        img.seek(0)
        notes.append(f"animated {fmt} ({img.n_frames} frames): first frame used")
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


def _write_normalised(rgb: Image.Image, tmp_path: Path, cfg: IngestConfig) -> tuple[Path, str, str]:
    """Resize/crop to the training resolution and write the PNG; returns its path, pixels sha256 and file sha256."""
    out = _normalise(rgb, cfg)
    pixels_sha = hashlib.sha256(out.tobytes()).hexdigest()
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    encoded = buf.getvalue()
    tmp_path.write_bytes(encoded)
    return tmp_path, pixels_sha, hashlib.sha256(encoded).hexdigest()
