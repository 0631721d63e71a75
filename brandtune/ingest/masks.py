"""Product masks at ingest: from a photo's alpha channel, from a mask file beside it, or computed on a plain
background. Runs inside the ingest worker processes, next to :func:`brandtune.ingest.images.process_photo`.

A mask is 8-bit greyscale, 255 = product, 0 = background, soft edges kept. The sources, in the order they win:

1. **a mask file** (``<name>.mask.png``, ``mask/<name>.*``, ``<name>-masklabel.png``; see
   :mod:`brandtune.ingest.sources`). It must have the photo's size as displayed (after the photo's EXIF orientation;
   the mask's own EXIF orientation is applied too). Greyscale, black-and-white, 16-bit and grey-palette files are
   read as they are; an RGB(A) file must be grey (its channels equal up to ``GREY_TOLERANCE`` levels, for JPEG
   noise). For a file with an alpha channel: when the alpha varies it is the mask (a cutout or white-on-transparent
   drawing; the colours are ignored), when it is uniform the grey levels are. A bad file is reported with a
   stable code (``mask_unreadable``, ``mask_wrong_size``, ``mask_not_greyscale``, ``mask_empty``, ``mask_full``)
   and the photo is kept without a mask: a file the user named is never silently replaced by a guess.
2. **the alpha channel** of an RGBA/LA/PA or transparent photo, when it holds both product (>= 128) and
   background (< 128) pixels.
3. **computed** (``masks: auto`` only) when the photo's border is a plain backdrop: a smooth (quadratic) colour
   field in CIELAB is fitted to the border pixels, robustly (a product touching the border is refitted away). If
   the 90th percentile of the border's distance to it exceeds ``auto_mask_max_border_spread`` the background is
   busy and the photo gets no mask ("no mask: busy background"). Otherwise the pixels within
   ``auto_mask_tolerance`` of the backdrop that connect to the border are background; the rest, opened and cleared
   of specks, is the product.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from brandtune.config import IngestConfig

PRODUCT_LEVEL = 128  # a mask pixel at or above this counts as product
GREY_TOLERANCE = 8  # largest channel difference of a grey RGB mask (JPEG chroma noise stays within 2-3)
AUTO_WORK_SIDE = 256  # automatic masks are computed on a copy at most this large, then scaled to the photo
AUTO_BORDER = 0.02  # border ring width, as a share of the shorter side (at least 1 px)
AUTO_MIN_COVERAGE = 0.005  # a computed product smaller than this share of the photo is no product
AUTO_MAX_COVERAGE = 0.95  # nor one larger (the backdrop was not found)
AUTO_MIN_SPECK = 0.002  # product specks smaller than this share of the photo are dropped
BUSY_NOTE = "no mask: busy background"


@dataclass
class MaskChoice:
    """The mask of one photo at the decoded photo's size, or why there is none."""

    mask: Image.Image | None = None  # mode "L"
    source: str | None = None  # "file", "alpha" or "auto"
    note: str | None = None  # "no mask: ..." when there is none
    problem: tuple[str, str] | None = None  # (reason code, detail) of a bad mask file
    detail: str | None = None  # numbers behind a note (border spread)


def choose_mask(
    rgb: Image.Image,
    alpha: Image.Image | None,
    mask_file: Path | None,
    shown_size: tuple[int, int],
    cfg: IngestConfig,
) -> MaskChoice:
    """The mask of a photo: its mask file, else its alpha, else (``masks: auto``) one computed.

    Args:
        rgb: The decoded, oriented, converted photo (possibly drafted smaller than ``shown_size``).
        alpha: Its alpha channel at the same size, if it had one.
        mask_file: The mask file beside the photo, if any.
        shown_size: The photo's size as displayed (after EXIF orientation, before any draft).
        cfg: Ingest settings (``masks`` and the automatic thresholds).
    """
    if cfg.masks == "off":
        return MaskChoice(note="no mask: masks off")
    if mask_file is not None:
        read = read_mask_file(mask_file, shown_size)
        if isinstance(read, tuple):
            return MaskChoice(note=f"no mask: bad mask file ({read[0]})", problem=read)
        if read.size != rgb.size:
            read = read.resize(rgb.size, Image.Resampling.LANCZOS)
        return MaskChoice(read, "file")
    if alpha is not None:
        values = np.asarray(alpha)
        if (values >= PRODUCT_LEVEL).any() and (values < PRODUCT_LEVEL).any():
            return MaskChoice(alpha, "alpha")
    if cfg.masks == "given":
        return MaskChoice(note="no mask: none given")
    return auto_mask(rgb, cfg)


def read_mask_file(path: Path, size: tuple[int, int]) -> Image.Image | tuple[str, str]:
    """A mask file as an "L" image of ``size`` (upright), or ``(reason code, detail)`` of why it is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                orientation = img.getexif().get(0x0112, 1)
                shown = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
                if shown != size:
                    return (
                        "mask_wrong_size",
                        f"mask is {shown[0]}x{shown[1]}, the photo is {size[0]}x{size[1]} as displayed (after "
                        "its EXIF orientation); save the mask at the photo's full size, upright",
                    )
                img.load()
                grey = _grey(ImageOps.exif_transpose(img))
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
    ) as e:
        return "mask_unreadable", f"cannot read the mask file: {e}"
    if isinstance(grey, tuple):
        return grey
    product = grey >= PRODUCT_LEVEL
    if not product.any():
        return "mask_empty", f"no product pixel (none >= {PRODUCT_LEVEL}); white marks the product"
    if product.all():
        return "mask_full", "every pixel is product: the mask says nothing; paint the background black"
    return Image.fromarray(grey, "L")


def _grey(img: Image.Image) -> np.ndarray | tuple[str, str]:
    """The mask levels of a decoded mask image (see the module docstring), or why it is not a grey mask."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))
    if img.mode in ("LA", "RGBA", "PA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha.copy()
        img = img.convert("L" if img.mode == "LA" else "RGB")
        if img.mode == "L":
            return np.asarray(img)
    if img.mode != "RGB":
        return (
            "mask_not_greyscale",
            f"mask is a {img.mode} image; save it as a greyscale PNG (white = product)",
        )
    arr = np.asarray(img).astype(np.int16)
    spread = int((arr.max(axis=2) - arr.min(axis=2)).max())
    if spread > GREY_TOLERANCE:
        return (
            "mask_not_greyscale",
            f"mask has colour (channels differ by up to {spread} levels, at most {GREY_TOLERANCE} allowed); "
            "save it as a greyscale or black-and-white PNG (white = product)",
        )
    return np.round(arr.mean(axis=2)).astype(np.uint8)


def _backdrop(lab: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit a quadratic colour field to the ring's Lab pixels (twice: the second time without the pixels far off
    the first fit, e.g. a product touching the border). Returns the field ``(h, w, 3)`` over the image and the
    border's 90th percentile distance to it."""
    h, w = ring.shape
    yy, xx = np.mgrid[0:h, 0:w]
    x, y = xx.ravel() / max(w - 1, 1) - 0.5, yy.ravel() / max(h - 1, 1) - 0.5
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)  # (h*w, 6)
    flat = lab.reshape(-1, 3)
    on_ring = ring.ravel()
    use = on_ring.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[use], flat[use], rcond=None)
        ring_dist = np.linalg.norm(flat[on_ring] - design[on_ring] @ coef, axis=1)
        use[on_ring] = ring_dist <= 3 * np.median(ring_dist) + 1.0
    return (design @ coef).reshape(h, w, 3), float(np.percentile(ring_dist, 90))


def auto_mask(rgb: Image.Image, cfg: IngestConfig) -> MaskChoice:
    """A product mask for a photo on a plain backdrop (see the module docstring), at ``rgb``'s size."""
    from scipy import ndimage
    from skimage.color import rgb2lab

    work = rgb.copy()
    work.thumbnail((AUTO_WORK_SIDE, AUTO_WORK_SIDE), Image.Resampling.BOX)
    lab = rgb2lab(np.asarray(work, dtype=np.float64) / 255.0)  # (h, w, 3)
    smooth = ndimage.uniform_filter(
        lab, size=(3, 3, 1), mode="nearest"
    )  # judge plainness with noise down ~3x
    h, w = lab.shape[:2]
    b = max(1, round(AUTO_BORDER * min(h, w)))
    ring = np.zeros((h, w), dtype=bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    field, spread = _backdrop(smooth, ring)
    detail = f"border spread {spread:.1f} (plain at <= {cfg.auto_mask_max_border_spread:g})"
    if spread > cfg.auto_mask_max_border_spread:
        return MaskChoice(note=BUSY_NOTE, detail=detail)
    labels, _ = ndimage.label(np.linalg.norm(lab - field, axis=2) <= cfg.auto_mask_tolerance)
    touching = np.unique(labels[ring & (labels > 0)])
    product = ~np.isin(labels, touching)
    radius = max(1, round(min(h, w) / 100))
    product = ndimage.binary_opening(product, structure=_disk(radius))
    parts, count = ndimage.label(product)
    if count:
        sizes = np.bincount(parts.ravel())[1:]
        keep = np.flatnonzero(sizes >= max(4, AUTO_MIN_SPECK * h * w)) + 1
        product = np.isin(parts, keep)
    coverage = float(product.mean())
    if not AUTO_MIN_COVERAGE <= coverage <= AUTO_MAX_COVERAGE:
        what = "no product found" if coverage < AUTO_MIN_COVERAGE else "no backdrop found"
        return MaskChoice(note=f"no mask: {what} on the plain background", detail=detail)
    mask = Image.fromarray((product * 255).astype(np.uint8), "L")
    return MaskChoice(mask.resize(rgb.size, Image.Resampling.LANCZOS), "auto", detail=detail)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius
