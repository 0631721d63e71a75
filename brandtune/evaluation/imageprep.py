"""Image input for the metrics: accepted types, conversion, and the per-image features computed once.

Metrics accept PIL images or numpy arrays (``(H, W)``, ``(H, W, 1|3|4)``; ``uint8`` in [0, 255], ``uint16`` in
[0, 65535] or float in [0, 1]; an alpha channel is dropped). :func:`prepare` converts an image once into the forms
the metrics share, so :func:`brandtune.evaluation.metrics.score_image` decodes and resizes each image only once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image
from skimage.color import rgb2lab

from brandtune.errors import EvaluationError

__all__ = [
    "COLOUR_SIDE",
    "STRUCTURE_SIDE",
    "ImageLike",
    "MetricInputError",
    "Prepared",
    "as_rgb_array",
    "prepare",
]

ImageLike = Image.Image | np.ndarray

COLOUR_SIDE = 64  # long side (px) of the copy palette and histogram metrics run on
STRUCTURE_SIDE = 64  # side (px) of the grey square SSIM compares


class MetricInputError(EvaluationError, ValueError):
    """An image or metric argument has the wrong shape, type or size."""


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """Convert an image to a float32 ``(H, W, 3)`` array in [0, 1] (NaN and out-of-range values are kept).

    Raises:
        MetricInputError: not a PIL image nor a ``(H, W)``, ``(H, W, 1|3|4)`` array, or empty.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if not isinstance(image, np.ndarray):
        raise MetricInputError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    arr = image[:, :, None] if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MetricInputError(
            f"expected an image array shaped (H, W), (H, W, 3) or (H, W, 4), got {image.shape}; "
            "convert channel-first tensors with .transpose(1, 2, 0)"
        )
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32)


@dataclass(frozen=True)
class Prepared:
    """One image in the forms the metrics need, computed once by :func:`prepare`.

    Attributes:
        u8: ``(H, W, 3)`` uint8 pixels at full resolution (NaN became 0, values clipped to the range).
        finite: False when the input held NaN or infinite values.
        pil: The same pixels as a PIL RGB image.
        small: A copy at most :data:`COLOUR_SIDE` pixels on its long side (box-filtered).
        small_lab: ``(h*w, 3)`` CIELAB pixels of a copy at most :data:`COLOUR_SIDE` pixels on its long side.
        grey: ``(STRUCTURE_SIDE, STRUCTURE_SIDE)`` float64 luminance in [0, 1].
        grey_u8: The same luminance as uint8.
    """

    u8: np.ndarray = field(repr=False)
    finite: bool
    pil: Image.Image
    small: Image.Image = field(repr=False)
    small_lab: np.ndarray = field(repr=False)
    grey: np.ndarray = field(repr=False)
    grey_u8: np.ndarray = field(repr=False)
    _phash: list[int] = field(default_factory=list, repr=False)

    @property
    def phash(self) -> int:
        """imagehash's 64-bit perceptual hash of the small copy, as an int (computed on first use).

        pHash shrinks to 32x32 anyway; hashing the small copy instead of a 512-px image saves ~3 ms.
        """
        if not self._phash:
            self._phash.append(int(str(imagehash.phash(self.small)), 16))
        return self._phash[0]


def prepare(image: ImageLike | Prepared) -> Prepared:
    """Convert an image (or pass a :class:`Prepared` through) into the forms the metrics share."""
    if isinstance(image, Prepared):
        return image
    finite = True
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        u8 = np.asarray(pil)
    else:
        raw = as_rgb_array(image)
        finite = bool(np.isfinite(raw).all())
        if not finite:
            raw = np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0)
        u8 = (np.clip(raw, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(u8)
    small = pil
    if max(pil.size) > COLOUR_SIDE:
        scale = COLOUR_SIDE / max(pil.size)
        small = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BOX)
    small_lab = rgb2lab(np.asarray(small, dtype=np.float32) / 255.0).reshape(-1, 3)
    grey_img = pil.convert("L").resize((STRUCTURE_SIDE, STRUCTURE_SIDE), Image.BOX)
    grey_u8 = np.asarray(grey_img)
    return Prepared(
        u8=u8,
        finite=finite,
        pil=pil,
        small=small,
        small_lab=small_lab,
        grey=grey_u8.astype(np.float64) / 255.0,
        grey_u8=grey_u8,
    )
