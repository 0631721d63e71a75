"""The evaluation's config: ``EvalConfig`` and the promotion gate's rules (``GateConfig``, ``GateRule``).

The rules are judged by :func:`brandtune.evaluation.gate.evaluate_gate`; a rule needs to know which way its metric
is better, which :data:`METRIC_DIRECTIONS` says (the metrics themselves are in :mod:`brandtune.evaluation.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from brandtune.config._base import StrictModel
from brandtune.config.aspects import normalise_aspects
from brandtune.config.device import Device, Dtype
from brandtune.config.sampler import SamplerConfig
from brandtune.errors import ConfigError

if TYPE_CHECKING:
    from brandtune.config.brand import BrandSpec

Direction = Literal["higher", "lower"]

#: Metric name -> which way is better. Covers :func:`~brandtune.evaluation.metrics.score_image`,
#: :func:`~brandtune.evaluation.metrics.score_set` and the model-based metrics.
METRIC_DIRECTIONS: dict[str, Direction] = {
    "palette_delta_e": "lower",
    "palette_share": "higher",
    "color_hist_distance": "lower",
    "ref_ssim": "higher",
    "ref_phash_distance": "lower",
    "diversity_ssim": "higher",
    "diversity_phash": "higher",
    "sharpness": "higher",
    "clipped_share": "lower",
    "contrast": "higher",
    "technical_ok": "higher",
    "clip_t": "higher",
    "clip_i": "higher",
    "dino": "higher",
    "fid": "lower",
    "kid": "lower",
}


def check_model_folder(folder: Path | str, what: str) -> Path:
    """Check that ``folder`` is a local model folder with a config and safetensors weights; returns it absolute.

    Used by :class:`EvalConfig` for its metric models and by the loaders of
    :mod:`brandtune.evaluation.model_metrics`, so that both refuse the same folders with the same words.

    Raises:
        ConfigError: the folder is missing, has no ``config.json``, or has no ``*.safetensors`` weights.
    """
    path = Path(folder).expanduser().absolute()
    hint = (
        f"give a local folder saved with save_pretrained (safetensors) for the {what}; nothing is downloaded"
    )
    if not path.is_dir():
        raise ConfigError(f"{what} folder {path} does not exist: {hint}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what} folder {path} has no config.json: {hint}")
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin"))
        extra = f" (found {found}: pickled weights are not loaded)" if found else ""
        raise ConfigError(f"{what} folder {path} has no *.safetensors weights{extra}: {hint}")
    return path


Comparison = Literal["min", "max", "no_regression", "improve_by"]
Reference = Literal["champion", "base"]


class GateRule(StrictModel):
    """One condition a candidate must meet to be promoted."""

    metric: str = Field(description="Metric name, e.g. 'palette_delta_e' (see METRIC_DIRECTIONS).")
    comparison: Comparison = Field(
        description="'min': value >= threshold; 'max': value <= threshold; 'no_regression': not worse than the "
        "reference by more than tolerance; 'improve_by': better than the reference by at least margin."
    )
    against: Reference = Field(
        default="champion",
        description="Reference of 'no_regression' / 'improve_by': 'champion' (skipped while there is none) or "
        "'base', the base model without adapter on the same prompts and seeds (judges the first champion "
        "only; fails when the evaluation has no base model).",
    )
    test: Literal["mean", "paired_bootstrap"] = Field(
        default="mean",
        description="'mean': compare the two means. 'paired_bootstrap' ('improve_by' only): pair the images by "
        "prompt and seed and pass when the whole confidence interval of the mean improvement is above margin.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="'paired_bootstrap': confidence level of the interval."
    )
    threshold: float | None = Field(default=None, description="Absolute threshold, for 'min' and 'max' only.")
    tolerance: float = Field(
        default=0.0, ge=0, description="'no_regression': how much worse than the reference is still accepted."
    )
    margin: float = Field(
        default=0.0, ge=0, description="'improve_by': how much better than the reference it must be."
    )
    relative: bool = Field(
        default=False,
        description="Read tolerance/margin as a fraction of the reference's absolute value (0.05 = 5%).",
    )
    direction: Literal["higher", "lower"] | None = Field(
        default=None, description="Which way is better; default: the metric's entry in METRIC_DIRECTIONS."
    )
    name: str | None = Field(
        default=None,
        description="Label in reports; default: '<metric> <comparison>', plus ' vs base' for base rules.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GateRule:
        absolute = self.comparison in ("min", "max")
        where = f"rule on {self.metric!r}"
        if absolute and self.threshold is None:
            raise ValueError(f"{where}: '{self.comparison}' needs a threshold")
        if not absolute and self.threshold is not None:
            raise ValueError(
                f"{where}: '{self.comparison}' compares with the {self.against} and takes no threshold; use "
                "tolerance (no_regression) or margin (improve_by)"
            )
        # not keyed on fields_set: a dumped rule (Prefect parameters, YAML) must validate again as it was
        if absolute and self.against == "base":
            raise ValueError(f"{where}: '{self.comparison}' is an absolute bar and takes no 'against'")
        if self.comparison == "no_regression" and self.margin:
            raise ValueError(f"{where}: 'no_regression' takes tolerance, not margin")
        if self.comparison == "improve_by" and self.tolerance:
            raise ValueError(f"{where}: 'improve_by' takes margin, not tolerance")
        if self.test == "paired_bootstrap" and self.comparison != "improve_by":
            raise ValueError(f"{where}: test 'paired_bootstrap' is for 'improve_by' rules only")
        if not absolute and self.direction is None and self.metric not in METRIC_DIRECTIONS:
            raise ValueError(f"{where}: unknown metric direction; set direction: higher or lower")
        return self

    @property
    def label(self) -> str:
        suffix = " vs base" if self.compares and self.against == "base" else ""
        return self.name or f"{self.metric} {self.comparison}{suffix}"

    @property
    def compares(self) -> bool:
        """True for rules judged against a reference model (champion or base)."""
        return self.comparison in ("no_regression", "improve_by")

    @property
    def better(self) -> Literal["higher", "lower"]:
        return self.direction or METRIC_DIRECTIONS.get(self.metric, "higher")


def default_rules(palette_margin: float = 0.0) -> list[GateRule]:
    """The default gate for brand imagery: relative to the base model first, to the champion after that.

    First champion (no champion yet):

    - ``palette_delta_e improve_by vs base`` (paired bootstrap): the product colours are closer to the brand palette
      (CIEDE2000) than the base model's on the same prompts and seeds, by more than chance, and by more than
      ``palette_margin`` (0 by default; a brand sets it with ``gate: {min_palette_improvement: ...}``).
    - ``technical_ok no_regression vs base``: no more images fail the technical checks than the base model's.

    Later candidates (a champion exists):

    - ``palette_delta_e no_regression``: no worse than the champion's by more than 2.0 (about a just-noticeable
      difference).
    - ``technical_ok no_regression``: no worse than the champion's.

    No absolute bar: a palette distance of 15 is good on one base and out of reach on another; a brand that needs
    one sets it in its brand.yaml (:meth:`GateConfig.for_brand`).
    """
    return [
        GateRule(
            metric="palette_delta_e",
            comparison="improve_by",
            against="base",
            test="paired_bootstrap",
            margin=palette_margin,
        ),
        GateRule(metric="technical_ok", comparison="no_regression", against="base", tolerance=0.0),
        GateRule(metric="palette_delta_e", comparison="no_regression", tolerance=2.0),
        GateRule(metric="technical_ok", comparison="no_regression", tolerance=0.0),
    ]


class GateConfig(StrictModel):
    """The promotion gate: every rule must pass (rules that do not apply to this evaluation are skipped)."""

    rules: list[GateRule] = Field(
        default_factory=default_rules, min_length=1, description="Rules; all must pass to promote."
    )

    @classmethod
    def for_brand(cls, brand: BrandSpec) -> GateConfig:
        """The default rules with the brand's ``gate:`` opt-ins: its palette margin and its absolute bars."""
        opt_in = brand.gate
        extra = [
            GateRule(metric=metric, comparison=kind, threshold=value)  # type: ignore[arg-type]  # min | max
            for metric, (kind, value) in opt_in.thresholds().items()
        ]
        return cls(rules=[*default_rules(opt_in.min_palette_improvement), *extra])


class EvalConfig(StrictModel):
    """An evaluation: which adapter versions to compare, on which seeds, with which sampler and gate."""

    brand: str = Field(description="Brand slug; its evaluation_prompts are the suite.")
    candidate: str = Field(
        default="candidate", min_length=1, description="Version to judge: an alias or a version number."
    )
    against: str | None = Field(
        default="champion",
        description="Alias or version to compare with. None, or no such alias yet: the candidate is judged as a "
        "first champion, against the base model.",
    )
    include_base: bool = Field(
        default=True,
        description="Also sample the base model without adapter. The first champion must beat it: without a "
        "champion and without the base model the default gate fails.",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3],
        min_length=1,
        max_length=64,
        description="Fixed seeds per prompt.",
    )
    sampler: SamplerConfig = Field(
        default_factory=SamplerConfig, description="Sampler settings, the same for every model compared."
    )
    aspects: list[str] | None = Field(
        default=None,
        description="Aspect ratios to sample each prompt and seed in (e.g. ['1:1', '2:3']), at about the area of "
        "the model's square size. Empty: the brand's first aspect only ('1:1' unless brand.yaml says otherwise). "
        "An explicit sampler width/height wins over this.",
    )
    batch_size: int = Field(default=8, ge=1, le=64, description="Images per pipeline call.")
    device: Device = "auto"
    dtype: Dtype = "auto"
    output_dir: Path | None = Field(
        default=None, description="Report folder (default: <home>/evaluations/...)."
    )
    promote: bool = Field(default=True, description="Move @champion to the candidate when the gate passes.")
    clip_model: Path | None = Field(
        default=None,
        description="Local CLIP model folder (save_pretrained, safetensors; e.g. openai/clip-vit-base-patch32 "
        "copied here; nothing is downloaded). Set: every image also gets clip_t (agreement with its prompt) and "
        "clip_i (mean similarity to the brand photos, each embedded as its product region where it has a "
        "mask). Empty: not computed. Informative: gate on them by adding a rule (e.g. clip_i no_regression).",
    )
    dino_model: Path | None = Field(
        default=None,
        description="Local DINOv2 model folder (save_pretrained, safetensors; e.g. facebook/dinov2-small copied "
        "here; nothing is downloaded). Set: every image also gets dino (mean similarity to the brand photos, "
        "each embedded as its product region where it has a mask). Empty: not computed. Informative: gate on "
        "it by adding a rule.",
    )
    gate: GateConfig | None = Field(
        default=None,
        description="Promotion rules; all must pass for the candidate to become @champion. Empty: the default "
        "gate plus the brand's own bars (gate: in brand.yaml). Default gate: the first champion must be closer "
        "to the palette than the base model on the same prompts and seeds (paired bootstrap, 95%) with no more "
        "technical failures; later ones no worse than the champion (palette distance by at most 2, technical "
        "checks not at all). Rules set here replace the default and the brand's bars.",
    )

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else normalise_aspects(value)

    @field_validator("clip_model", "dino_model")
    @classmethod
    def _model_folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        what = "CLIP model" if info.field_name == "clip_model" else "DINO model"
        return None if value is None else check_model_folder(value, what)

    def aspects_for(self, brand: BrandSpec) -> list[str]:
        """The aspects this evaluation samples: :attr:`aspects`, else the brand's first."""
        return self.aspects if self.aspects is not None else brand.aspects[:1]

    def gate_for(self, brand: BrandSpec) -> GateConfig:
        """The rules this evaluation applies: :attr:`gate` when set, else the brand's default gate."""
        return self.gate if self.gate is not None else GateConfig.for_brand(brand)
