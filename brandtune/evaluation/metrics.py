"""Weight-free image metrics: palette adherence, colour distribution, similarity, diversity and technical checks.

Every function is pure (no I/O, no global state) and takes PIL images or numpy arrays (``(H, W, 3)`` or ``(H, W)``,
``uint8`` in [0, 255] or float in [0, 1]; an alpha channel is dropped). Colour work uses CIELAB and CIEDE2000 from
scikit-image, dominant colours come from k-means (:func:`scipy.cluster.vq.kmeans2`, fixed seed), perceptual hashes
from ``imagehash``.

To stay cheap next to generation, colour metrics run on a copy at most :data:`COLOUR_SIDE` pixels on its long side
and structural metrics on a :data:`STRUCTURE_SIDE`-pixel grey square; sharpness and clipping use full resolution.
Build a :class:`Palette` and a :class:`ReferenceSet` once per evaluation and pass them to every
:func:`score_image` call: reference features are then computed once.

Metric names returned by :func:`score_image` and :func:`score_set` are stable; :data:`METRIC_DIRECTIONS` says for
each whether higher or lower is better and :data:`METRIC_DESCRIPTIONS` says what it measures.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans2
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

from brandtune.config import METRIC_DIRECTIONS
from brandtune.errors import ConfigError
from brandtune.evaluation.imageprep import (
    COLOUR_SIDE,
    STRUCTURE_SIDE,
    ImageLike,
    MetricInputError,
    Prepared,
    as_rgb_array,
    prepare,
)
from brandtune.evaluation.technical import TechnicalLimits, TechnicalReport, technical_check
from brandtune.synthetic import resolve_colour

logger = logging.getLogger(__name__)

__all__ = [
    "COLOUR_SIDE",
    "METRIC_DESCRIPTIONS",
    "METRIC_DIRECTIONS",
    "STRUCTURE_SIDE",
    "ImageLike",
    "MetricInputError",
    "Palette",
    "PaletteResult",
    "Prepared",
    "ReferenceSet",
    "TechnicalLimits",
    "TechnicalReport",
    "as_rgb_array",
    "color_hist_distance",
    "diversity",
    "dominant_colours",
    "palette_adherence",
    "prepare",
    "reference_similarity",
    "score_image",
    "score_set",
    "technical_check",
]

HIST_BINS = (
    8  # bins per axis (25 a*/b* units each; finer bins saturate the distance near 1) of the a*/b* histogram
)
HIST_RANGE = (-100.0, 100.0)  # a*, b* range covered by the histogram (values outside are clipped into it)

#: Metric name -> one line for people reading a report.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "palette_delta_e": "Colour distance (CIEDE2000) from each brand colour to the nearest dominant colour; 0 = exact",
    "palette_share": "Share of coloured (non-neutral) pixels within reach of a brand colour, 0-1",
    "color_hist_distance": "Difference of the colour distribution from the brand photos (chi-square, 0-1)",
    "ref_ssim": "Structural similarity to the closest brand photo (-1 to 1)",
    "ref_phash_distance": "Perceptual-hash distance to the closest brand photo (0-64 bits)",
    "diversity_ssim": "Variety across images: mean pairwise 1 - SSIM (0 = identical)",
    "diversity_phash": "Variety across images: mean pairwise perceptual-hash distance (bits)",
    "sharpness": "Detail: variance of the Laplacian (compare at the same resolution only)",
    "clipped_share": "Share of blown-out or crushed pixels, 0-1",
    "contrast": "RMS contrast of luminance, 0-0.5",
    "technical_ok": "Share of images passing the technical checks (finite, not blank, not clipped, contrast)",
    "clip_t": "CLIP text-image agreement (x100)",
    "clip_i": "CLIP image similarity to the brand photos (cosine)",
    "dino": "DINO image similarity to the brand photos (cosine)",
    "fid": "Frechet distance to the brand photos in the configured feature space",
    "kid": "Kernel distance to the brand photos in the configured feature space",
}


def _hamming(a: int | np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ b)


# ----------------------------------------------------------------------------------------------------------------
# Palette adherence


@dataclass(frozen=True)
class Palette:
    """A brand palette in CIELAB: chromatic colours are scored, neutral ones are left out of the scoring.

    Build it with :meth:`from_hex` from ``BrandSpec.palette`` and ``BrandSpec.neutral_palette``.
    """

    chromatic_hex: tuple[str, ...]
    neutral_hex: tuple[str, ...]
    chromatic: np.ndarray = field(repr=False)  # (P, 3) Lab
    neutral: np.ndarray = field(repr=False)  # (Q, 3) Lab, Q may be 0

    @classmethod
    def from_hex(cls, palette: Sequence[str], neutral_palette: Sequence[str] = ()) -> Palette:
        """Parse ``#rrggbb`` colours (or :data:`brandtune.synthetic.COLOURS` names).

        Raises:
            ConfigError: ``palette`` is empty or a colour does not parse.
        """
        if not palette:
            raise ConfigError("palette is empty: give at least one chromatic brand colour as '#rrggbb'")
        return cls(
            chromatic_hex=tuple(palette),
            neutral_hex=tuple(neutral_palette),
            chromatic=_hex_to_lab(palette),
            neutral=_hex_to_lab(neutral_palette),
        )


def _hex_to_lab(colours: Sequence[str]) -> np.ndarray:
    if not colours:
        return np.zeros((0, 3), dtype=np.float64)
    rgb = np.array([resolve_colour(c) for c in colours], dtype=np.float64)[None, :, :] / 255.0
    return rgb2lab(rgb)[0]


def _as_palette(palette: Palette | Sequence[str], neutral_palette: Sequence[str]) -> Palette:
    if isinstance(palette, Palette):
        if neutral_palette:
            raise ConfigError("pass neutral colours inside the Palette, not also as neutral_palette")
        return palette
    return Palette.from_hex(palette, neutral_palette)


@dataclass(frozen=True)
class PaletteResult:
    """Palette adherence of one image.

    Attributes:
        delta_e: Mean over chromatic brand colours of the CIEDE2000 distance to the nearest dominant colour of the
            image (range 0 to ~100+, lower is better; below ~5 is a close match, above ~20 a different colour).
        share: Chroma-weighted share of non-neutral pixels within ``threshold`` of a chromatic brand colour
            (0 to 1, higher is better).
        per_colour: CIEDE2000 distance for each chromatic brand colour, in palette order.
        dominant_lab: ``(k, 3)`` dominant colours (k-means centres in CIELAB) of the scored pixels.
        dominant_weights: Share of the scored pixels in each dominant colour (sums to 1).
    """

    delta_e: float
    share: float
    per_colour: tuple[float, ...]
    dominant_lab: np.ndarray = field(repr=False)
    dominant_weights: np.ndarray = field(repr=False)


def dominant_colours(lab: np.ndarray, k: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dominant colours of CIELAB pixels by k-means (k-means++ start, 10 iterations, fixed seed).

    Args:
        lab: ``(N, 3)`` CIELAB pixels.
        k: Number of clusters; fewer are returned when there are fewer distinct pixels or clusters end empty.
        seed: Seed of the k-means++ initialisation; the same input and seed give the same result.

    Returns:
        ``(centres (k', 3), weights (k',))``, weights are pixel shares summing to 1, largest first.
    """
    lab = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
    if len(lab) == 0:
        raise MetricInputError("dominant_colours needs at least one pixel")
    keys = np.round(lab).astype(np.int64) + 256  # 1-unit grid, packed into one int per colour
    distinct, index = np.unique((keys[:, 0] << 20) | (keys[:, 1] << 10) | keys[:, 2], return_index=True)
    if len(distinct) <= k:  # too few distinct colours to cluster: each is its own centre
        centres = lab[index]
        labels = np.argmin(((lab[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "one of the clusters is empty": dropped below
            centres, labels = kmeans2(lab, k, iter=10, minit="++", seed=np.random.default_rng(seed))
    counts = np.bincount(labels, minlength=len(centres)).astype(np.float64)
    keep = counts > 0
    centres, weights = centres[keep], counts[keep] / counts.sum()
    order = np.argsort(-weights, kind="stable")
    return centres[order], weights[order]


def palette_adherence(
    image: ImageLike | Prepared,
    palette: Palette | Sequence[str],
    neutral_palette: Sequence[str] = (),
    *,
    threshold: float = 15.0,
    chroma_full: float = 20.0,
    k: int = 8,
    min_cluster_share: float = 0.005,
    seed: int = 0,
) -> PaletteResult:
    """How well an image's product colours match the brand's chromatic palette.

    Product focus: backgrounds are mostly neutral (white studio sweep, snow, grey street, night sky), so pixels are
    weighted by CIELAB chroma, ``min(1, C*/chroma_full)``, and pixels within ``threshold`` of a neutral brand
    colour get weight 0 (white matches snow and studio backdrops). Dominant colours are found by k-means on the
    pixels of weight >= 0.5 (falling back to all non-neutral pixels, then to all pixels, if there are none), and
    each chromatic brand colour is compared with its *nearest* dominant colour, so a coloured background that
    shares no brand colour (sea, sand, trees) does not count against the product.

    Args:
        image: The image.
        palette: Chromatic brand colours (``#rrggbb``) or a prepared :class:`Palette`.
        neutral_palette: Neutral brand colours, excluded from scoring (only with a list ``palette``).
        threshold: CIEDE2000 distance under which a pixel counts as matching a colour.
        chroma_full: Chroma at which a pixel gets full weight.
        k: Number of dominant colours.
        min_cluster_share: Dominant colours covering less of the scored pixels than this are ignored (noise).
        seed: k-means seed.

    Returns:
        A :class:`PaletteResult`; ``delta_e`` lower is better, ``share`` higher is better.
    """
    pal = _as_palette(palette, neutral_palette)
    prepared = prepare(image)
    return _palette_on_lab(prepared.small_lab, pal, threshold, chroma_full, k, min_cluster_share, seed)


def _palette_on_lab(
    lab: np.ndarray,
    pal: Palette,
    threshold: float,
    chroma_full: float,
    k: int,
    min_cluster_share: float,
    seed: int,
) -> PaletteResult:
    weight = np.minimum(1.0, np.hypot(lab[:, 1], lab[:, 2]) / chroma_full)
    n_brand = len(pal.chromatic)
    de = deltaE_ciede2000(
        lab[:, None, :], np.concatenate([pal.chromatic, pal.neutral])[None, :, :]
    )  # (N, P+Q)
    brand_de = de[:, :n_brand].min(axis=1)
    non_neutral = np.ones(len(lab), dtype=bool)
    if len(pal.neutral):
        non_neutral = de[:, n_brand:].min(axis=1) > threshold
        weight = weight * non_neutral
    total = float(weight.sum())
    share = float((weight * (brand_de <= threshold)).sum() / total) if total > 0 else 0.0
    for mask in (weight >= 0.5, non_neutral, np.ones(len(lab), dtype=bool)):
        if mask.any():
            break
    centres, weights = dominant_colours(lab[mask], k=k, seed=seed)
    usable = weights >= min_cluster_share
    centres_used = centres[usable] if usable.any() else centres
    per_colour = deltaE_ciede2000(pal.chromatic[:, None, :], centres_used[None, :, :]).min(axis=1)
    return PaletteResult(
        delta_e=float(per_colour.mean()),
        share=share,
        per_colour=tuple(float(v) for v in per_colour),
        dominant_lab=centres,
        dominant_weights=weights,
    )


# ----------------------------------------------------------------------------------------------------------------
# References: colour distribution and nearest-neighbour similarity


def _ab_histogram(lab: np.ndarray) -> np.ndarray:
    ab = np.clip(lab[:, 1:], HIST_RANGE[0], HIST_RANGE[1])
    hist, _, _ = np.histogram2d(ab[:, 0], ab[:, 1], bins=HIST_BINS, range=[HIST_RANGE, HIST_RANGE])
    return hist / max(hist.sum(), 1.0)


@dataclass(frozen=True)
class ReferenceSet:
    """Features of the brand's reference photos, computed once and compared with every generated image."""

    count: int
    grey: np.ndarray = field(repr=False)  # (R, S, S) float64
    hashes: np.ndarray = field(repr=False)  # (R,) uint64 perceptual hashes
    ab_hist: np.ndarray = field(repr=False)  # (B, B) pooled a*/b* histogram, sums to 1

    @classmethod
    def from_images(cls, images: Sequence[ImageLike]) -> ReferenceSet:
        """Prepare reference photos (any sizes).

        Raises:
            MetricInputError: ``images`` is empty.
        """
        if len(images) == 0:
            raise MetricInputError("the reference set is empty: give at least one brand photo")
        prepared = [prepare(img) for img in images]
        hist = np.mean([_ab_histogram(p.small_lab) for p in prepared], axis=0)
        return cls(
            count=len(prepared),
            grey=np.stack([p.grey for p in prepared]),
            hashes=np.array([p.phash for p in prepared], dtype=np.uint64),
            ab_hist=hist,
        )


def _as_references(references: ReferenceSet | Sequence[ImageLike]) -> ReferenceSet:
    return references if isinstance(references, ReferenceSet) else ReferenceSet.from_images(references)


def color_hist_distance(image: ImageLike | Prepared, references: ReferenceSet | Sequence[ImageLike]) -> float:
    """Chi-square distance between the image's a*/b* histogram and the reference photos' pooled histogram.

    Measures whether the overall colour mood (hue and chroma, not lightness) matches the brand's photos. Uses
    ``HIST_BINS x HIST_BINS`` bins over a*, b* in ``HIST_RANGE``; distance ``0.5 * sum((p-q)^2 / (p+q))``.

    Returns:
        0 (same distribution) to 1 (disjoint); lower is better.
    """
    refs = _as_references(references)
    prepared = prepare(image)
    p, q = _ab_histogram(prepared.small_lab), refs.ab_hist
    denom = p + q
    nz = denom > 0
    return float(0.5 * ((p[nz] - q[nz]) ** 2 / denom[nz]).sum())


def reference_similarity(
    image: ImageLike | Prepared, references: ReferenceSet | Sequence[ImageLike], ssim_candidates: int = 5
) -> tuple[float, float]:
    """Similarity to the closest reference photo.

    SSIM is computed on ``STRUCTURE_SIDE``-pixel grey squares against the ``ssim_candidates`` references closest
    in mean squared error (all of them when there are that few; the shortlist keeps the cost flat as the reference
    set grows); the perceptual hash is imagehash's 64-bit pHash against every reference. Very high similarity can
    also mean the model copies a photo.

    Args:
        image: The image.
        references: Brand photos or a prepared :class:`ReferenceSet`.
        ssim_candidates: How many references SSIM is computed against.

    Returns:
        ``(ref_ssim, ref_phash_distance)``: max SSIM over references (-1 to 1, higher is closer) and min Hamming
        distance in bits (0 to 64, lower is closer).
    """
    refs = _as_references(references)
    prepared = prepare(image)
    mse = ((refs.grey - prepared.grey[None]) ** 2).mean(axis=(1, 2))
    nearest = np.argsort(mse, kind="stable")[: max(1, ssim_candidates)]
    ssim = max(structural_similarity(prepared.grey, refs.grey[i], data_range=1.0) for i in nearest)
    dist = int(_hamming(prepared.phash, refs.hashes).min())
    return float(ssim), float(dist)


# ----------------------------------------------------------------------------------------------------------------
# Diversity across a set


def diversity(images: Sequence[ImageLike | Prepared]) -> tuple[float, float]:
    """How different the images of a set are from each other.

    Returns:
        ``(diversity_ssim, diversity_phash)``: mean over all pairs of ``1 - SSIM`` on grey squares (0 for identical
        images, ~1 for unrelated ones, at most 2) and mean pairwise perceptual-hash distance in bits (0 to 64).
        Higher is more varied; identical images give 0 for both.

    Raises:
        MetricInputError: fewer than two images.
    """
    if len(images) < 2:
        raise MetricInputError(f"diversity needs at least 2 images, got {len(images)}")
    prepared = [prepare(img) for img in images]
    hashes = np.array([p.phash for p in prepared], dtype=np.uint64)
    ssim_d, hash_d = [], []
    for i, j in itertools.combinations(range(len(prepared)), 2):
        ssim_d.append(1.0 - structural_similarity(prepared[i].grey, prepared[j].grey, data_range=1.0))
        hash_d.append(int(_hamming(hashes[i], hashes[j : j + 1])[0]))
    return float(np.mean(ssim_d)), float(np.mean(hash_d))


# ----------------------------------------------------------------------------------------------------------------
# Convenience: everything for one image, everything for a set


def score_image(
    image: ImageLike | Prepared,
    *,
    palette: Palette | Sequence[str] | None = None,
    neutral_palette: Sequence[str] = (),
    references: ReferenceSet | Sequence[ImageLike] | None = None,
    limits: TechnicalLimits | None = None,
) -> dict[str, float]:
    """All weight-free per-image metrics, as ``{name: value}`` with the names of :data:`METRIC_DIRECTIONS`.

    Always: ``sharpness``, ``clipped_share``, ``contrast``, ``technical_ok`` (1.0 or 0.0). With ``palette``:
    ``palette_delta_e``, ``palette_share``. With ``references``: ``color_hist_distance``, ``ref_ssim``,
    ``ref_phash_distance``. Pass a prepared :class:`Palette` and :class:`ReferenceSet` when scoring many images.
    A NaN frame is scored with NaN replaced by black and ``technical_ok = 0``.
    """
    prepared = prepare(image)
    tech = technical_check(prepared, limits)
    scores: dict[str, float] = {
        "sharpness": tech.sharpness,
        "clipped_share": tech.clipped_share,
        "contrast": tech.contrast,
        "technical_ok": 1.0 if tech.ok else 0.0,
    }
    if palette is not None:
        result = palette_adherence(prepared, _as_palette(palette, neutral_palette))
        scores["palette_delta_e"] = result.delta_e
        scores["palette_share"] = result.share
    if references is not None:
        refs = _as_references(references)
        scores["color_hist_distance"] = color_hist_distance(prepared, refs)
        scores["ref_ssim"], scores["ref_phash_distance"] = reference_similarity(prepared, refs)
    return scores


def score_set(images: Sequence[ImageLike | Prepared]) -> dict[str, float]:
    """Set-level metrics of one model's images: ``diversity_ssim`` and ``diversity_phash`` (higher is more varied).

    Raises:
        MetricInputError: fewer than two images.
    """
    div_ssim, div_phash = diversity(images)
    return {"diversity_ssim": div_ssim, "diversity_phash": div_phash}
