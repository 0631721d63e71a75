"""``IngestConfig``: how photos are validated, normalised and masked into a dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from brandtune.config._base import HexColour, StrictModel

if TYPE_CHECKING:
    from brandtune.config.brand import BrandSpec


class IngestConfig(StrictModel):
    """How photos are validated and normalised into a dataset. Part of the dataset fingerprint."""

    resolution: int = Field(
        default=64,
        ge=32,
        le=2048,
        description="Nominal output size in pixels: with crop 'keep' an image has about resolution**2 pixels "
        "at its own aspect ratio; with 'center' or 'none' it is a resolution x resolution square.",
    )
    min_side: int | None = Field(
        default=None,
        ge=1,
        description="Reject photos whose shorter side is below this. Default: the resolution.",
    )
    max_aspect: float = Field(
        default=2.5,
        ge=1.0,
        description="Reject photos whose long/short side ratio exceeds this (also bounds the shapes 'keep' makes).",
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Reject images declaring more pixels than this (decompression-bomb guard).",
    )
    crop: Literal["keep", "center", "none"] = Field(
        default="keep",
        description="'keep': no crop, resize to about resolution**2 pixels at the photo's own aspect ratio "
        "(w = round(res*sqrt(a)), h = round(res/sqrt(a)), a = width/height; the trainer buckets by aspect); "
        "'center': crop the centre square after resizing the short side; "
        "'none': pad to a square with the background colour.",
    )
    background: HexColour = Field(
        default="#ffffff",
        description="Colour that transparent pixels are composited on (and padding). Default: the brand's.",
    )
    masks: Literal["auto", "given", "off"] = Field(
        default="auto",
        description="Product masks: 'auto' = the alpha channel of cutouts, mask files beside the photos "
        "(<name>.mask.png, mask/<name>.*, <name>-masklabel.png), else computed when the photo is on a plain "
        "background; 'given' = alpha and mask files only; 'off' = no masks.",
    )
    auto_mask_max_border_spread: float = Field(
        default=3.5,
        ge=0,
        description="'auto' masks: a photo's background counts as plain when the 90th percentile of its border "
        "pixels' colour distance (CIE76 delta E, 3x3-smoothed) from a smooth fitted backdrop is at most this; "
        "above it the photo gets no mask ('no mask: busy background'). Measured: flat and gradient backdrops "
        "0-0.2 (JPEG too), grey with sensor noise sigma 4: 2.6, the sample brand's studio shots 1.1-2.8, its snow "
        "and city scenes 4.3-9.6, kitchens, beaches and forests 14-31, random noise 37-86.",
    )
    auto_mask_tolerance: float = Field(
        default=12.0,
        gt=0,
        description="'auto' masks: pixels within this colour distance (delta E) of the fitted backdrop that "
        "connect to the border are background.",
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
            "background": brand.background,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change the dataset's content (``workers`` does not)."""
        return self.model_dump(exclude={"workers"})
