"""The brand: ``BrandSpec`` (``data/brands/<brand>/brand.yaml``), its ``gate:`` bars, and where brands are found."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from brandtune.config._base import SLUG_RE, HexColour, StrictModel, load_yaml_model
from brandtune.errors import ConfigError

DEFAULT_BRANDS_DIR = Path("data/brands")

#: The widest aspect ratio (long side / short side) a brand may ask for: the trainer's bucket bounds, 1:3 .. 3:1.
MAX_ASPECT_RATIO = 3.0
_ASPECT_RE = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


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
            unknown = set(re.findall(r"{(\w*)}", text)) - {"trigger", "subject"}
            if unknown:
                raise ValueError(
                    f"{text!r} uses unknown placeholders {sorted(unknown)}; use {{trigger}}, {{subject}}"
                )
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


def parse_aspect(text: str) -> tuple[int, int]:
    """``"W:H"`` as ``(W, H)``: positive integers whose ratio is within 1:3 .. 3:1 (:data:`MAX_ASPECT_RATIO`).

    Raises:
        ValueError: another format, a zero side or a ratio out of bounds (one line naming the value).
    """
    match = _ASPECT_RE.fullmatch(str(text))
    if not match:
        raise ValueError(f"aspect {text!r} is not 'W:H' with whole numbers, e.g. '2:3' or '16:9'")
    w, h = int(match[1]), int(match[2])
    if w == 0 or h == 0:
        raise ValueError(f"aspect {text!r} has a zero side; use positive numbers, e.g. '2:3'")
    if max(w / h, h / w) > MAX_ASPECT_RATIO + 1e-9:
        raise ValueError(
            f"aspect {text!r} is wider than 1:3 .. 3:1, the trainer's bounds; use e.g. '1:3' or '3:1'"
        )
    return w, h


def format_aspect(width: int, height: int) -> str:
    """``"W:H"``."""
    return f"{width}:{height}"


def normalise_aspects(value: list[str]) -> list[str]:
    """Aspects as ``"W:H"``, each valid (:func:`~brandtune.config.brand.parse_aspect`) and listed once.

    Raises:
        ValueError: an empty list, a malformed aspect or one listed twice.
    """
    if not value:
        raise ValueError(
            "aspects is an empty list; give at least one, e.g. ['1:1'], or leave it empty (null)"
        )
    out = [format_aspect(*parse_aspect(text)) for text in value]
    dupes = sorted({a for a in out if out.count(a) > 1})
    if dupes:
        raise ValueError(f"aspects {dupes} are listed twice; keep one of each")
    return out


def aspect_size(aspect: str, side: int, multiple: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``aspect`` at about the area of a ``side`` x ``side`` square.

    The exact sides are ``side * sqrt(r)`` by ``side / sqrt(r)`` (``r = W/H``, same area as the square); each is
    then rounded on its own to the nearest multiple of ``multiple`` (halves round up), and is at least one
    ``multiple``; a square aspect is ``side`` x ``side`` itself. With a 64 px base and
    multiple 16 (builtin:tiny), ``"2:3"`` gives 48 x 80 (exact 52.3 x 78.4) and ``"16:9"`` 80 x 48 (85.3 x 48.0):
    each side is the nearest the grid allows, so the area can be ~10% off the square's on a coarse grid (2:3 at
    512 px, multiple 64: 448 x 640, exact 418.0 x 627.1).

    Args:
        aspect: ``"W:H"`` (see :func:`parse_aspect`).
        side: The model's square size in px (its native size, or the training resolution).
        multiple: The family's size multiple (VAE factor x downsampling or patch; see
            :func:`brandtune.sampling.size_multiple`).

    Raises:
        ValueError: a malformed aspect, or ``side`` / ``multiple`` not positive.
    """
    import math

    if side < 1 or multiple < 1:
        raise ValueError(
            f"aspect_size needs a positive side and multiple, got side={side}, multiple={multiple}"
        )
    w, h = parse_aspect(aspect)
    if w == h:  # the square is the side itself, on the grid or not: a brand without aspects samples as it did
        return side, side
    root = math.sqrt(w / h)

    def snap(x: float) -> int:
        return max(multiple, math.floor(x / multiple + 0.5) * multiple)

    return snap(side * root), snap(side / root)


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
