"""Running a diffusers pipeline the same way everywhere: scheduler choice, batches with per-image seeds.

Evaluation, generation and ``brandtune base sample`` all sample through :func:`sample_batch` (one pipeline call;
:func:`sample_images` splits a longer list into such calls), so "same sampler settings for every model compared"
is one code path, and a generation manifest can name exactly what made an image. Each image gets its own
``torch.Generator`` seeded with its seed, so an image does not depend on how many were asked for with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from brandtune.config import SamplerConfig, SchedulerName

if TYPE_CHECKING:
    from PIL import Image


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


#: Sampler settings the docs, the tests and ``brandtune base sample`` use for builtin:tiny.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0


def sample_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order, in :func:`sample_batch` calls of ``batch_size``.

    The pipeline keeps its own scheduler and size; no negative prompt.

    Args:
        pipe: A diffusers text-to-image pipeline (LoRA loaded or not).
        prompts: One prompt per image.
        seeds: One seed per image (same length as ``prompts``).
        steps: Sampler steps.
        guidance: Classifier-free guidance scale.
        batch_size: Images per pipeline call.

    Returns:
        The images, in the order of ``prompts``.

    Raises:
        ValueError: ``prompts`` and ``seeds`` differ in length.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    sampler = SamplerConfig(scheduler="default", num_inference_steps=steps, guidance_scale=guidance)
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk_p, chunk_s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
        images.extend(sample_batch(pipe, chunk_p, chunk_s, sampler))
    return images
