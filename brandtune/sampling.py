"""Running a diffusers pipeline the same way everywhere: scheduler choice, batches with per-image seeds.

Evaluation and generation both sample through :func:`sample_batch`, so "same sampler settings for every model
compared" is one code path, and a generation manifest can name exactly what made an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from brandtune.config import StrictModel

if TYPE_CHECKING:
    from PIL import Image

SchedulerName = Literal["default", "ddim", "euler", "dpm++"]


class SamplerConfig(StrictModel):
    """How images are sampled; recorded with every image so it can be made again."""

    scheduler: SchedulerName = Field(
        default="ddim", description="Sampler: ddim, euler, dpm++ or the model's default."
    )
    num_inference_steps: int = Field(default=20, ge=1, le=200, description="Denoising steps.")
    guidance_scale: float = Field(default=4.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field(default="", description="What to steer away from.")
    width: int | None = Field(default=None, ge=32, le=4096, description="Width in px (default: model's).")
    height: int | None = Field(default=None, ge=32, le=4096, description="Height in px (default: model's).")


def apply_scheduler(pipe: Any, name: SchedulerName) -> None:
    """Swap the pipeline's scheduler, keeping its noise schedule (betas, prediction type)."""
    if name == "default":
        return
    import diffusers

    cls = {
        "ddim": diffusers.DDIMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "dpm++": diffusers.DPMSolverMultistepScheduler,
    }[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def native_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def sample_batch(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    sampler: SamplerConfig,
    init_image: Image.Image | None = None,
    strength: float = 0.6,
) -> list[Image.Image]:
    """One pipeline call: ``prompts[i]`` with a generator seeded ``seeds[i]``. Deterministic for the same batch."""
    import torch

    size = native_size(pipe)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "negative_prompt": [sampler.negative_prompt] * len(prompts) if sampler.negative_prompt else None,
        "num_inference_steps": sampler.num_inference_steps,
        "guidance_scale": sampler.guidance_scale,
        "generator": generators,
    }
    if init_image is not None:
        from diffusers import AutoPipelineForImage2Image

        img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        width, height = sampler.width or size, sampler.height or size
        image = init_image.convert("RGB").resize((width, height))
        return img2img(image=[image] * len(prompts), strength=strength, **kwargs).images
    kwargs.update(width=sampler.width or size, height=sampler.height or size)
    return pipe(**kwargs).images
