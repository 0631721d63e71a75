"""``IngestConfig``: how photos are validated and normalised into a dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from brandtune.config._base import HexColour, StrictModel

if TYPE_CHECKING:
    from brandtune.config.brand import BrandSpec


class IngestConfig(StrictModel):
    """How photos are validated and normalised into a dataset. Part of the dataset fingerprint."""

    resolution: int = Field(default=64, ge=32, le=2048, description="Output size in pixels (square).")
    min_side: int | None = Field(
        default=None,
        ge=1,
        description="Reject photos whose shorter side is below this. Default: the resolution.",
    )
    max_aspect: float = Field(
        default=2.5, ge=1.0, description="Reject photos whose long/short side ratio exceeds this."
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Reject images declaring more pixels than this (decompression-bomb guard).",
    )
    crop: Literal["center", "none"] = Field(
        default="center",
        description="'center': crop the centre square after resizing the short side; "
        "'none': pad to a square with the background colour.",
    )
    background: HexColour = Field(
        default="#ffffff", description="Colour that transparent pixels are composited on (and padding)."
    )
    animated: Literal["first_frame", "reject"] = Field(
        default="first_frame",
        description="Animated images (GIF/WebP/APNG): use the first frame, or reject them.",
    )
    near_duplicate_distance: int = Field(
        default=4,
        ge=-1,
        le=64,
        description="Perceptual-hash Hamming distance at or below which two photos count as near duplicates "
        "(-1 turns the check off).",
    )
    min_images: int = Field(default=4, ge=1, description="Fewer accepted photos than this is an error.")
    caption_template: str = Field(
        default="a photo of {trigger} {subject}", description="Caption for photos without one."
    )
    trigger: str = Field(default="sks", description="Token that must appear in every caption.")
    subject: str = Field(default="product", description="Product noun used by the caption template.")
    workers: int = Field(
        default=0, ge=0, description="Worker processes for decoding/resizing; 0 means one per CPU core."
    )

    @property
    def effective_min_side(self) -> int:
        return self.min_side if self.min_side is not None else self.resolution

    @classmethod
    def for_brand(cls, brand: BrandSpec, **overrides: Any) -> IngestConfig:
        """The ingest config a brand implies (its resolution, trigger, subject, template), plus overrides."""
        values: dict[str, Any] = {
            "resolution": brand.resolution,
            "trigger": brand.trigger,
            "subject": brand.subject,
            "caption_template": brand.caption_template,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change the dataset's content (``workers`` does not)."""
        return self.model_dump(exclude={"workers"})
