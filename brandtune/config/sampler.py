"""``SamplerConfig``: how images are sampled, the same for generation and for every model an evaluation compares."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from brandtune.config._base import StrictModel

SchedulerName = Literal["default", "ddim", "euler", "dpm++"]


class SamplerConfig(StrictModel):
    """How images are sampled; recorded with every image so it can be made again."""

    scheduler: SchedulerName = Field(
        default="ddim", description="Sampler: ddim, euler, dpm++ or the model's default."
    )
    num_inference_steps: int = Field(default=20, ge=1, le=200, description="Denoising steps per image.")
    guidance_scale: float = Field(default=4.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field(default="", description="What the images should not show.")
    width: int | None = Field(default=None, ge=32, le=4096, description="Width in px (default: model's).")
    height: int | None = Field(default=None, ge=32, le=4096, description="Height in px (default: model's).")
