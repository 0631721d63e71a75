"""Evaluation results: the report's data model, bootstrap confidence intervals and per-model aggregates.

:class:`EvalResults` is what an evaluation job produces: the models compared (candidate, champion, base), the fixed
prompts and seeds, the sampler settings they all shared, one row per generated image with its metrics, set-level
metrics per model, aggregates with confidence intervals and the gate's decision.
:func:`brandtune.evaluation.report_html.write_report` writes it as ``report.json`` and a self-contained
``report.html``; this module holds the data and the statistics only, and imports no page code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

__all__ = [
    "BrandPhotoRow",
    "EvalResults",
    "ImageRow",
    "MetricStats",
    "ModelInfo",
    "SamplerSettings",
    "SubjectFidelityInfo",
    "aggregate",
    "bootstrap_ci",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Record):
    """One model compared in the evaluation."""

    key: str = Field(description="Short unique key used in rows, e.g. 'candidate', 'champion', 'base'.")
    label: str = Field(description="Column heading, e.g. 'Candidate v7'.")
    uri: str | None = Field(
        default=None, description="MLflow model URI, e.g. 'models:/acme-lora/7'; None for base."
    )
    version: str | None = Field(default=None, description="Registered model version, if any.")
    base_model: str = Field(description="Base diffusion model reference.")


class SamplerSettings(_Record):
    """Sampler settings shared by every model in the comparison."""

    scheduler: str = Field(default="", description="Scheduler class name.")
    steps: int = Field(ge=1, description="Inference steps.")
    guidance_scale: float = Field(description="Classifier-free guidance scale.")
    width: int = Field(ge=1, description="Image width in pixels.")
    height: int = Field(ge=1, description="Image height in pixels.")
    negative_prompt: str = Field(default="", description="Negative prompt, if any.")
    sizes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Aspect -> [width, height], when the images were sampled in several aspects (width and "
        "height are then the first's).",
    )


class ImageRow(_Record):
    """One generated image and its per-image metrics."""

    model: str = Field(description="The ModelInfo.key that made it.")
    prompt_index: int = Field(ge=0, description="Index into EvalResults.prompts.")
    seed: int = Field(description="Generator seed.")
    image: str = Field(description="Image path relative to the report folder, with '/' separators.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Metric name -> value.")
    aspect: str | None = Field(
        default=None, description="Aspect ('2:3') when the evaluation sampled several; else empty."
    )

    @field_validator("image")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _relative_path(value)


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value or not value:
        raise ValueError(
            f"image path {value!r} must be relative to the report folder, '/'-separated, no '..'"
        )
    return value


class BrandPhotoRow(_Record):
    """One of the brand's training photos shown in the report, its background dimmed where it has a mask."""

    image: str = Field(
        description="The shown image (photo with mask overlay), relative to the report folder."
    )
    source: str = Field(description="The photo's file name in the dataset.")
    mask: bool = Field(description="Whether the photo has a product mask (then the background is dimmed).")
    coverage: float | None = Field(default=None, description="Share of the photo the mask calls product.")

    @field_validator("image")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _relative_path(value)


class SubjectFidelityInfo(_Record):
    """How the model-based metrics (clip_t, clip_i, dino) were computed, when the evaluation had their models."""

    clip_model: str | None = Field(
        default=None, description="Local CLIP folder of clip_t and clip_i; None: not computed."
    )
    dino_model: str | None = Field(
        default=None, description="Local DINOv2 folder of dino; None: not computed."
    )
    references: int = Field(
        ge=0,
        description="Brand photos clip_i and dino compare each image with (0: no dataset here, neither computed).",
    )
    product_regions: int = Field(
        ge=0,
        description="How many of those were embedded as their product region (the mask's box plus a margin, "
        "background grey); the others (no mask, or an empty one) whole.",
    )

    @property
    def note(self) -> str:
        """One line for the report: which models, and what the images were compared with."""
        models = ", ".join(
            f"{what} {Path(folder).name}"
            for what, folder in (("CLIP", self.clip_model), ("DINO", self.dino_model))
            if folder
        )
        if not self.references:
            return f"Model-based metrics with {models}; no brand photos here, so clip_i and dino are not computed."
        whole = self.references - self.product_regions
        return (
            f"Model-based metrics with {models}: clip_i and dino compare each image with {self.references} brand "
            f"photos, {self.product_regions} as their product region (mask box, background grey), {whole} whole."
        )


class MetricStats(_Record):
    """Mean of a metric over a model's images with a bootstrap confidence interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=0, description="Number of finite values the statistics are computed from.")


class EvalResults(_Record):
    """Everything an evaluation produced; serialised as report.json."""

    brand: str = Field(description="Brand slug.")
    brand_display_name: str = Field(default="", description="Brand name for headings.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    models: list[ModelInfo] = Field(min_length=1)
    prompts: list[str] = Field(min_length=1, description="The filled-in evaluation prompts.")
    seeds: list[int] = Field(min_length=1)
    sampler: SamplerSettings
    per_image: list[ImageRow] = Field(default_factory=list)
    set_metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Model key -> set-level metrics (e.g. diversity)."
    )
    aggregates: dict[str, dict[str, MetricStats]] = Field(
        default_factory=dict, description="Model key -> metric -> stats; filled by write_report when empty."
    )
    gate: dict[str, Any] | None = Field(default=None, description="GateResult.to_dict() of the decision.")
    brand_photos: list[BrandPhotoRow] = Field(
        default_factory=list, description="A few of the training photos, with their masks, for the report."
    )
    brand_photos_note: str = Field(
        default="", description="Where the brand photos come from, or why there are none (one line)."
    )
    subject_fidelity: SubjectFidelityInfo | None = Field(
        default=None,
        description="How clip_t, clip_i and dino were computed; None when the evaluation had no CLIP/DINO model.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvalResults:
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError(f"model keys must be unique, got {keys}")
        for row in self.per_image:
            if row.model not in keys:
                raise ValueError(f"image {row.image!r}: model {row.model!r} is not one of {keys}")
            if row.prompt_index >= len(self.prompts):
                raise ValueError(
                    f"image {row.image!r}: prompt_index {row.prompt_index} out of range ({len(self.prompts)} prompts)"
                )
        unknown = (set(self.set_metrics) | set(self.aggregates)) - set(keys)
        if unknown:
            raise ValueError(f"metrics given for unknown models {sorted(unknown)}; models are {keys}")
        return self


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean.

    Args:
        values: Sample values (non-finite values are an error; filter them first).
        n: Number of bootstrap resamples.
        seed: Seed of the resampling; the same values and seed give the same interval.
        alpha: 1 - confidence level (0.05 gives a 95% interval).

    Returns:
        ``(mean, low, high)`` with ``low <= mean <= high``; a single value gives a zero-width interval.

    Raises:
        ValueError: no values, non-finite values, or ``alpha`` / ``n`` out of range.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.isfinite(arr).all():
        raise ValueError("bootstrap_ci got NaN or infinite values; drop them first")
    if not 0 < alpha < 1 or n < 1:
        raise ValueError(f"bootstrap_ci needs 0 < alpha < 1 and n >= 1, got alpha={alpha}, n={n}")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n, arr.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, min(float(low), mean), max(float(high), mean)


def aggregate(
    per_image_rows: Iterable[ImageRow | Mapping[str, Any]], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and metric: mean, bootstrap CI and count over the images (non-finite values are left out).

    Args:
        per_image_rows: :class:`ImageRow` objects or dicts with ``model`` and ``metrics``.
        n, seed, alpha: Passed to :func:`bootstrap_ci`.

    Returns:
        ``{model: {metric: {"mean", "ci_low", "ci_high", "n"}}}``; a metric with no finite value gets NaN stats
        and ``n = 0``.
    """
    collected: dict[str, dict[str, list[float]]] = {}
    for row in per_image_rows:
        model, metrics = (
            (row.model, row.metrics) if isinstance(row, ImageRow) else (row["model"], row["metrics"])
        )
        per_model = collected.setdefault(str(model), {})
        for name, value in metrics.items():
            per_model.setdefault(name, []).append(float(value))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, metrics in collected.items():
        out[model] = {}
        for name, values in sorted(metrics.items()):
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                out[model][name] = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
                continue
            mean, low, high = bootstrap_ci(finite, n=n, seed=seed, alpha=alpha)
            out[model][name] = {"mean": mean, "ci_low": low, "ci_high": high, "n": len(finite)}
    return out
