"""``CampaignSpec`` and ``BrandAutomation``: a brand's standard campaigns and what runs without being asked.

Both live in brand.yaml::

    campaigns:
      - name: weekly-lookbook
        prompt: "a photo of {trigger} {subject}"
        settings: [beach, studio]
        variations: 10
    automation:
      require_approval: false
      retrain_on_new_photos: false

A campaign's generation knobs are :class:`~brandtune.config.GenerateConfig`'s own fields (derived, not declared
again), so a standard campaign means exactly what ``brandtune generate`` with the same values means.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from brandtune.config._base import SLUG_RE, StrictModel, check_placeholders, derive_model
from brandtune.config.generate import GenerateConfig

#: The GenerateConfig fields a standard campaign sets; the rest (model, output folder, batch size) belong to the run.
CAMPAIGN_FIELDS = ("prompt", "settings", "variations", "aspects", "sampler", "seed")


class CampaignSpec(derive_model(GenerateConfig, CAMPAIGN_FIELDS, base=StrictModel)):
    """One standard campaign: generated from @champion on a schedule and whenever @champion changes."""

    name: str = Field(
        description="The campaign's slug, unique in the brand (its folder: campaigns/<brand>/<name>/).",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_RE.match(value):
            raise ValueError(
                f"campaign name {value!r} is not a slug: use lower-case letters, digits and dashes, "
                "e.g. 'weekly-lookbook'"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty; describe the image, e.g. 'a photo of {trigger} {subject}'")
        return check_placeholders(value.strip())

    def generate_config(self, brand: str, model: str, **run: object) -> GenerateConfig:
        """The :class:`GenerateConfig` of this campaign from ``model``; ``run`` sets the run's own fields
        (``output_dir``, ``batch_size``, ...)."""
        fields = {name: getattr(self, name) for name in CAMPAIGN_FIELDS}
        return GenerateConfig(brand=brand, model=model, **fields, **run)


class BrandAutomation(StrictModel):
    """What brandtune's automations may do for this brand without being asked (see README, Automations)."""

    require_approval: bool = Field(
        default=False,
        description="A retrain whose gate passes waits for a person to approve the promotion in the Prefect UI "
        "(approve or reject, with a comment) instead of promoting at once.",
    )
    retrain_on_new_photos: bool = Field(
        default=False,
        description="An ingest that makes a new dataset starts the weekly-retrain deployment for this brand "
        "(when the retrain-on-new-photos trigger in prefect.yaml is enabled).",
    )
