"""Technical checks that catch broken generations: NaN, black or constant frames, clipping, flat contrast, blur."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field
from skimage.exposure import is_low_contrast
from skimage.filters import laplace

from brandtune.config import StrictModel
from brandtune.evaluation.imageprep import ImageLike, Prepared, prepare

__all__ = ["TechnicalLimits", "TechnicalReport", "technical_check"]

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 luminance weights


class TechnicalLimits(StrictModel):
    """Thresholds of :func:`technical_check`. Raise ``max_clipped_share`` for brands shot on pure-white sweeps."""

    clip_low: float = Field(
        default=2 / 255, ge=0, le=1, description="A pixel whose channels are all at or below this is crushed."
    )
    clip_high: float = Field(
        default=253 / 255,
        ge=0,
        le=1,
        description="A pixel whose channels are all at or above this is blown out.",
    )
    max_clipped_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fail when more than this share of pixels is blown out or crushed (a white studio sweep "
        "is often a third of the frame).",
    )
    black_level: float = Field(
        default=0.04, ge=0, le=1, description="A frame whose brightest channel stays below this is black."
    )
    constant_range: float = Field(
        default=2 / 255,
        ge=0,
        description="A frame whose every channel varies by less than this (max - min) is constant.",
    )
    low_contrast_fraction: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="skimage's is_low_contrast fraction: fail when the 1-99 percentile luminance range covers "
        "less than this share of the full range.",
    )
    min_sharpness: float | None = Field(
        default=None,
        ge=0,
        description="Fail when the Laplacian variance is below this (off by default: it depends on resolution).",
    )


@dataclass(frozen=True)
class TechnicalReport:
    """Result of :func:`technical_check`.

    Attributes:
        ok: True when no check failed.
        failures: Names of the failed checks (``non_finite``, ``black``, ``constant``, ``clipped``,
            ``low_contrast``, ``blurry``), empty when ``ok``.
        sharpness: Variance of the Laplacian of luminance (in [0, 1]) at full resolution (>= 0, higher is sharper;
            it scales with resolution and content, so compare images of the same size).
        clipped_share: Share of pixels blown out or crushed (0 to 1, lower is better).
        highlight_share: Share of blown-out pixels (all channels at or above ``clip_high``).
        shadow_share: Share of crushed pixels (all channels at or below ``clip_low``).
        contrast: RMS contrast, the standard deviation of luminance in [0, 1] (0 to 0.5, higher has more contrast).
    """

    ok: bool
    failures: tuple[str, ...]
    sharpness: float
    clipped_share: float
    highlight_share: float
    shadow_share: float
    contrast: float


def technical_check(image: ImageLike | Prepared, limits: TechnicalLimits | None = None) -> TechnicalReport:
    """Check an image for the failures a diffusion model produces.

    Args:
        image: The image; float arrays may contain NaN (an fp16 overflow), which fails ``non_finite`` and is
            scored as black.
        limits: Thresholds (defaults: :class:`TechnicalLimits`).
    """
    limits = limits or TechnicalLimits()
    prepared = prepare(image)
    u8 = prepared.u8
    r, g, b = u8[:, :, 0], u8[:, :, 1], u8[:, :, 2]
    lo, hi = np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)
    highlight = np.count_nonzero(lo >= limits.clip_high * 255 - 1e-6) / lo.size
    shadow = np.count_nonzero(hi <= limits.clip_low * 255 + 1e-6) / hi.size
    channel_range = max(int(c.max()) - int(c.min()) for c in (r, g, b)) / 255  # per-channel reductions: fast
    luma = (u8.astype(np.float32) @ _LUMA) / 255.0  # (H, W)
    sharpness = float(laplace(luma).var())
    checks = {
        "non_finite": not prepared.finite,
        "black": float(hi.max()) / 255 < limits.black_level,
        "constant": channel_range < limits.constant_range,
        "clipped": highlight + shadow > limits.max_clipped_share,
        "low_contrast": bool(
            is_low_contrast(prepared.grey_u8, fraction_threshold=limits.low_contrast_fraction)
        ),
        "blurry": limits.min_sharpness is not None and sharpness < limits.min_sharpness,
    }
    failures = tuple(name for name, failed in checks.items() if failed)
    return TechnicalReport(
        ok=not failures,
        failures=failures,
        sharpness=sharpness,
        clipped_share=highlight + shadow,
        highlight_share=highlight,
        shadow_share=shadow,
        contrast=float(luma.std()),
    )
