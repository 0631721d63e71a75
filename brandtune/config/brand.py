"""The brand: ``BrandSpec`` (``data/brands/<brand>/brand.yaml``), its ``gate:`` bars, and where brands are found."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from brandtune.config._base import (
    SLUG_RE,
    HexColour,
    StrictModel,
    check_placeholders,
    load_yaml_model,
    slugify,
)
from brandtune.config.aspects import normalise_aspects
from brandtune.config.campaign import BrandAutomation, CampaignSpec
from brandtune.errors import ConfigError

DEFAULT_BRANDS_DIR = Path("data/brands")


class BrandGate(StrictModel):
    """A brand's own promotion bars (``gate:`` in brand.yaml), on top of the default gate. Every key is optional.

    By default a new adapter becomes the first champion when it is measurably closer to the brand than the base
    model on the same prompts and seeds, and later ones when they do not fall behind the champion. A bar set here
    is an extra rule, judged on the candidate's mean over the evaluation images, with or without a champion: use
    it for a level this brand must reach whatever the base model does. ``GateConfig.for_brand``
    (:mod:`brandtune.config.evaluate`) turns this section into rules, which :mod:`brandtune.evaluation.gate` judges.

    Example (brand.yaml)::

        gate:
          max_palette_delta_e: 15      # product colours within 15 CIEDE2000 of the palette, on average
          min_palette_improvement: 1   # the first champion is surely at least 1 closer than the base model
    """

    max_palette_delta_e: float | None = Field(
        default=None,
        ge=0,
        description="Highest accepted mean colour distance (CIEDE2000) from the brand colours to the colours "
        "in the images; 0 is an exact match, about 2 is a just-noticeable difference. Empty: no bar.",
    )
    min_palette_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest accepted mean share (0-1) of coloured pixels that are near a brand colour. "
        "Empty: no bar.",
    )
    max_color_hist_distance: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Highest accepted mean difference (0-1) between the images' colour mix and the brand "
        "photos'. Empty: no bar.",
    )
    min_ref_ssim: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Lowest accepted mean structural similarity (-1 to 1) to the closest brand photo. "
        "Empty: no bar.",
    )
    min_technical_ok: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest accepted share (0-1) of images that pass the technical checks (not black, blank, "
        "blown out or flat), e.g. 0.9. Empty: only 'no worse than the base model / the champion'.",
    )
    min_palette_improvement: float = Field(
        default=0.0,
        ge=0,
        description="How much closer to the palette (CIEDE2000, mean over the images) the first champion must "
        "be than the base model, with 95% confidence: the low end of the interval of the improvement must be "
        "above it. 0: any improvement beyond chance.",
    )

    def thresholds(self) -> dict[str, tuple[str, float]]:
        """The absolute bars set: ``{metric: ("min" | "max", value)}``, in field order."""
        out: dict[str, tuple[str, float]] = {}
        for key, value in self.model_dump(exclude={"min_palette_improvement"}).items():
            if value is not None:
                kind, metric = key.split("_", 1)
                out[metric] = (kind, float(value))
        return out


class BrandSpec(StrictModel):
    """A brand, as described by ``data/brands/<brand>/brand.yaml``."""

    name: str = Field(description="The brand's slug: lower-case letters, digits and dashes (e.g. 'acme').")
    display_name: str = Field(default="", description="Human-readable brand name for reports.")
    trigger: str = Field(
        description="The rare token that names the product in prompts and captions (e.g. 'acme').",
        min_length=2,
        max_length=40,
    )
    subject: str = Field(
        description="The product noun that follows the trigger (e.g. 'bottle').", min_length=1
    )
    palette: list[HexColour] = Field(
        min_length=1,
        description="The brand's colours as #rrggbb; the first is the dominant product colour.",
    )
    neutral_palette: list[HexColour] = Field(
        default_factory=list,
        description="Brand colours that are neutral (white, black, grey). Kept out of palette metrics because "
        "backgrounds match them too.",
    )
    base_model: str = Field(
        default="builtin:tiny",
        description="Base diffusion model: 'builtin:tiny', a local diffusers folder, or a hub id 'org/name'.",
    )
    resolution: int = Field(
        default=64,
        ge=32,
        le=2048,
        description="Training resolution in pixels (square). Photos are normalised to this size at ingest.",
    )
    background: HexColour = Field(
        default="#ffffff",
        description="Colour that transparent photos (RGBA cutouts) are composited on at ingest; their alpha "
        "channel is kept as the product mask.",
    )
    caption_template: str = Field(
        default="a photo of {trigger} {subject}",
        description="Caption used for photos without a sidecar caption. Placeholders: {trigger}, {subject}.",
    )
    evaluation_prompts: list[str] = Field(
        min_length=1,
        description="Fixed prompts of the evaluation suite. Placeholders: {trigger}, {subject}.",
    )
    settings: dict[str, str] = Field(
        default_factory=dict,
        description="Named generation settings, key -> phrase appended to a prompt (e.g. beach: 'on a beach').",
    )
    aspects: list[str] = Field(
        default_factory=lambda: ["1:1"],
        min_length=1,
        description="Aspect ratios (width:height) the brand's images come in, e.g. ['1:1', '2:3', '16:9'], each "
        "between 1:3 and 3:1. Validation images, campaigns and (when asked) evaluations sample each at about the "
        "area of the model's square size. The first is the evaluation's default. Default: ['1:1'].",
    )
    gate: BrandGate = Field(
        default_factory=BrandGate,
        description="This brand's own promotion bars on top of the default gate (e.g. max_palette_delta_e: 15). "
        "Empty: the default gate only (beat the base model first, then do not fall behind the champion).",
    )
    campaigns: list[CampaignSpec] = Field(
        default_factory=list,
        description="Standard campaigns: generated from @champion by the scheduled-campaign deployment and again "
        "whenever @champion changes. Each has a unique name, a prompt, settings, variations and optional "
        "aspects, seed and sampler overrides.",
    )
    automation: BrandAutomation = Field(
        default_factory=BrandAutomation,
        description="Approvals and event-driven retraining for this brand (both off by default).",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_RE.match(value):
            raise ValueError(
                f"brand name {value!r} is not a slug: use lower-case letters, digits and dashes, e.g. 'acme'"
            )
        return value

    @field_validator("trigger")
    @classmethod
    def _single_token(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"trigger {value!r} must be one word (letters, digits, '_' or '-')")
        return value

    @field_validator("caption_template", "evaluation_prompts")
    @classmethod
    def _known_placeholders(cls, value: str | list[str]) -> str | list[str]:
        for text in [value] if isinstance(value, str) else value:
            check_placeholders(text)
        return value

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, value: list[str]) -> list[str]:
        return normalise_aspects(value)

    @model_validator(mode="after")
    def _palettes_disjoint(self) -> BrandSpec:
        overlap = {c.lower() for c in self.palette} & {c.lower() for c in self.neutral_palette}
        if overlap:
            raise ValueError(f"colours {sorted(overlap)} are in both palette and neutral_palette; keep one")
        return self

    @model_validator(mode="after")
    def _campaigns_known(self) -> BrandSpec:
        names = [c.name for c in self.campaigns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"campaigns {dupes} are listed twice; give each campaign its own name")
        for campaign in self.campaigns:
            for value in campaign.settings:
                self.setting_phrase(value)
        return self

    def setting_phrase(self, value: str) -> tuple[str, str]:
        """``(key, phrase)`` of one generation setting: a key of ``settings`` maps to its phrase, a phrase of
        several words stands for itself (its key is its slug).

        Raises:
            ValueError: a one-word value that is not a key of ``settings`` (most likely a typo).
        """
        if value in self.settings:
            return value, self.settings[value]
        if " " in value.strip():
            return slugify(value), value.strip()
        known = ", ".join(sorted(self.settings)) or "none"
        raise ValueError(
            f"unknown setting {value!r} for brand {self.name}: use a key from brand.yaml ({known}) "
            "or a phrase such as 'on a beach'"
        )

    def campaign(self, name: str) -> CampaignSpec:
        """The standard campaign ``name``.

        Raises:
            ConfigError: no such campaign (the message lists the brand's campaigns).
        """
        for campaign in self.campaigns:
            if campaign.name == name:
                return campaign
        known = ", ".join(c.name for c in self.campaigns) or "none"
        raise ConfigError(
            f"brand {self.name} has no campaign {name!r} (its campaigns: {known}); add it under campaigns: in "
            f"{brand_dir(self.name) / 'brand.yaml'}"
        )

    @property
    def instance_phrase(self) -> str:
        """``"<trigger> <subject>"``, the phrase every caption and prompt about the product contains."""
        return f"{self.trigger} {self.subject}"

    def fill(self, text: str) -> str:
        """Substitute ``{trigger}`` and ``{subject}`` in a template."""
        return text.replace("{trigger}", self.trigger).replace("{subject}", self.subject)

    def ensure_trigger(self, text: str) -> tuple[str, bool]:
        """``text`` with the trigger token, and whether it had to be added (as a leading ``"<trigger>, "``)."""
        return ensure_trigger(self.fill(text), self.trigger)


def ensure_trigger(text: str, trigger: str) -> tuple[str, bool]:
    """``text`` if it contains ``trigger`` as a whole word, else ``"<trigger>, <text>"``; and whether it was added."""
    if re.search(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", text):
        return text, False
    return f"{trigger}, {text}", True


def brands_root(brands_dir: Path | None = None) -> Path:
    """The folder that holds the brands: ``brands_dir``, else ``$BRANDTUNE_BRANDS_DIR``, else ``data/brands``."""
    return Path(brands_dir or os.environ.get("BRANDTUNE_BRANDS_DIR") or DEFAULT_BRANDS_DIR)


def brand_dir(brand: str, brands_dir: Path | None = None) -> Path:
    """The folder of a brand: ``<brands_dir>/<brand>`` (``data/brands`` or ``$BRANDTUNE_BRANDS_DIR``)."""
    return brands_root(brands_dir) / brand


def _missing_brand(brand: str | Path, spec_path: Path, by_slug: bool, brands_dir: Path | None) -> ConfigError:
    """The error for a brand that is not there: the absolute paths searched, the brands that are, the fix."""
    if not by_slug:
        return ConfigError(
            f"brand {str(brand)!r}: {spec_path.absolute()} does not exist; give a brand slug or the path of "
            "an existing brand.yaml or its folder"
        )
    root = spec_path.parent.parent.absolute()
    known = sorted(p.name for p in root.glob("*") if (p / "brand.yaml").is_file()) if root.is_dir() else []
    found = f"known brands in {root}: {', '.join(known)}" if known else f"no brands found in {root}"
    env = os.environ.get("BRANDTUNE_BRANDS_DIR")
    now = f"it is {env!r}" if env else "unset, so data/brands under the current folder is searched"
    if brands_dir is not None:
        now = "here the caller's brands_dir was searched instead"
    return ConfigError(
        f"brand {str(brand)!r}: {spec_path.absolute()} does not exist ({found}); set BRANDTUNE_BRANDS_DIR to "
        f"the folder that holds <brand>/brand.yaml ({now})"
    )


def load_brand(brand: str | Path, brands_dir: Path | None = None) -> BrandSpec:
    """Load and validate a brand spec by slug (``acme``) or by path to its ``brand.yaml`` or folder.

    A slug is looked up in ``brands_dir``, else ``$BRANDTUNE_BRANDS_DIR``, else ``data/brands`` (relative to the
    current folder).

    Raises:
        ConfigError: the brand does not exist (the message names the absolute folder searched, lists the brands
            that are there and says how to point elsewhere) or its spec is invalid.
    """
    path = Path(brand)
    by_slug = False
    if path.suffix in {".yaml", ".yml"}:
        spec_path = path
    elif path.is_dir() or len(path.parts) > 1:
        spec_path = path / "brand.yaml"
    else:
        spec_path, by_slug = brand_dir(str(brand), brands_dir) / "brand.yaml", True
    if not spec_path.is_file():
        raise _missing_brand(brand, spec_path, by_slug, brands_dir)
    spec = load_yaml_model(BrandSpec, spec_path)
    if spec_path.parent.name != spec.name and spec_path.parent.name != "":
        raise ConfigError(
            f"{spec_path}: name {spec.name!r} does not match its folder {spec_path.parent.name!r}; rename one"
        )
    return spec
