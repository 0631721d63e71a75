"""``SamplerConfig``: how images are sampled, the same for generation and for every model an evaluation compares."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from brandtune.config._base import StrictModel

SchedulerName = Literal["auto", "default", "ddim", "euler", "dpm++"]


class SamplerConfig(StrictModel):
    """How images are sampled; recorded with every image so it can be made again."""

    scheduler: SchedulerName = Field(
        default="auto",
        description="Sampler: ddim, euler, dpm++ (SD, SDXL) or the model's default; auto: ddim for SD and SDXL, "
        "the model's own (flow-matching Euler) for FLUX and SD3.",
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="Denoising steps per image. Empty: the family's (SD, SDXL: 20; FLUX.1-dev, SD3: 28; "
        "FLUX.1-schnell: 4).",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=30.0,
        description="Guidance scale (FLUX.1-dev: the embedded guidance). Empty: the family's (SD, SDXL: 4.0; "
        "FLUX.1-dev: 3.5; FLUX.1-schnell: 0; SD3: 5.0).",
    )
    negative_prompt: str = Field(default="", description="What the images should not show.")
    width: int | None = Field(default=None, ge=32, le=4096, description="Width in px (default: model's).")
    height: int | None = Field(default=None, ge=32, le=4096, description="Height in px (default: model's).")
