"""``GenerateConfig``: a campaign job, what to generate from which adapter and how."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from brandtune.config._base import StrictModel
from brandtune.config.aspects import normalise_aspects
from brandtune.config.device import Device, Dtype
from brandtune.config.sampler import SamplerConfig


class GenerateConfig(StrictModel):
    """A campaign job: what to generate, from which adapter, and how."""

    brand: str = Field(description="Brand slug (data/brands/<brand>/brand.yaml).")
    prompt: str = Field(description="The prompt; {trigger} and {subject} are filled in from the brand.")
    settings: list[str] = Field(
        default_factory=list,
        description="Settings to place the product in: keys of brand.yaml 'settings' (e.g. beach) or phrases "
        "('in a snowy cabin'). Empty: the prompt alone.",
    )
    variations: int = Field(default=10, ge=1, le=1000, description="Images per setting (different seeds).")
    model: str = Field(
        default="champion",
        min_length=1,
        description="Adapter to use: an alias (champion, candidate), a version number, or 'base' for no adapter.",
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Sampler settings.")
    aspects: list[str] | None = Field(
        default=None,
        description="Aspect ratios (e.g. ['1:1', '2:3']): every setting and variation is made in each, at about "
        "the area of the model's square size. Empty: the brand's aspects (brand.yaml; '1:1' when it lists none). "
        "An explicit sampler width/height wins over this.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of variation 0; variation k uses seed + k.")
    batch_size: int = Field(default=8, ge=1, le=64, description="Images per pipeline call.")
    output_dir: Path | None = Field(
        default=None,
        description="Folder to write into (re-running skips images already there). Empty: "
        "BRANDTUNE_HOME/campaigns/{brand}/{time}-{prompt}.",
    )
    max_images: int = Field(
        default=500, ge=1, description="Refuse jobs larger than this (settings x variations)."
    )
    init_image: Path | None = Field(
        default=None, description="A product photo to make variations of (img2img)."
    )
    strength: float = Field(
        default=0.6, gt=0.0, le=1.0, description="img2img: how far to move from the photo."
    )
    fuse: bool = Field(default=True, description="Fuse the adapter into the weights (faster; one adapter).")
    device: Device = "auto"
    dtype: Dtype = "auto"

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else normalise_aspects(value)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty; describe the image, e.g. 'a photo of {trigger} {subject}'")
        return value.strip()
