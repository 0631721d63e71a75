"""Running a diffusers pipeline the same way everywhere: scheduler choice, batches with per-image seeds.

Evaluation, generation and ``brandtune base sample`` all sample through :func:`sample_batch` (one pipeline call;
:func:`sample_images` splits a longer list into such calls), so "same sampler settings for every model compared"
is one code path, and a generation manifest can name exactly what made an image. Each image gets its own
``torch.Generator`` seeded with its seed, so an image does not depend on how many were asked for with it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from brandtune.config import SamplerConfig
from brandtune.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: T5 tokens per prompt the FLUX and SD3 pipelines use by default.
DEFAULT_SEQUENCE_LENGTH: dict[str, int] = {"flux": 512, "sd3": 256}


def default_sequence_length(family: str, tokenizer_max: int | None, requested: int | None = None) -> int:
    """T5 tokens per prompt, the same in training and sampling: ``requested``, else the pipeline's default capped at
    what the tokenizer takes (tiny test tokenizers take fewer)."""
    if requested is not None:
        return requested
    length = DEFAULT_SEQUENCE_LENGTH[family]
    return min(length, int(tokenizer_max)) if tokenizer_max and tokenizer_max < 1e9 else length


#: What a sampler setting left empty means, per kind of pipeline: brandtune's long-standing choice for the UNet
#: families, and the model cards' for FLUX.1-dev (embedded guidance 3.5, ~28 steps), -schnell (4 steps, no
#: guidance) and SD3/3.5 (CFG ~5, 28 steps).
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"scheduler": "ddim", "num_inference_steps": 20, "guidance_scale": 4.0},
    "flux": {"scheduler": "default", "num_inference_steps": 28, "guidance_scale": 3.5},
    "flux-schnell": {"scheduler": "default", "num_inference_steps": 4, "guidance_scale": 0.0},
    "sd3": {"scheduler": "default", "num_inference_steps": 28, "guidance_scale": 5.0},
}


def pipeline_kind(pipe: Any) -> str:
    """Which row of :data:`SAMPLER_DEFAULTS` a pipeline samples by."""
    name = type(pipe).__name__
    if name.startswith("Flux"):
        return "flux" if pipe.transformer.config.guidance_embeds else "flux-schnell"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    return "unet"


def resolve_sampler(sampler: SamplerConfig, pipe: Any) -> SamplerConfig:
    """``sampler`` with every empty setting filled for ``pipe``: the family's defaults and the model's size.

    Raises:
        ConfigError: a UNet scheduler asked of a flow-matching pipeline.
    """
    kind = pipeline_kind(pipe)
    empty = {"scheduler": "auto", "num_inference_steps": None, "guidance_scale": None}
    filled = {k: v for k, v in SAMPLER_DEFAULTS[kind].items() if getattr(sampler, k) == empty[k]}
    size = native_size(pipe)
    filled.update(width=sampler.width or size, height=sampler.height or size)
    resolved = sampler.model_copy(update=filled)
    if kind != "unet" and resolved.scheduler != "default":
        raise ConfigError(
            f"scheduler {resolved.scheduler!r} is a UNet (DDPM) sampler; a {type(pipe).__name__} samples with its "
            "flow-matching Euler scheduler: leave scheduler empty or set it to 'default'"
        )
    return resolved


def apply_scheduler(pipe: Any, sampler: SamplerConfig) -> SamplerConfig:
    """Swap the pipeline's scheduler as ``sampler`` says (keeping its noise schedule: betas, prediction type);
    returns the resolved sampler (:func:`resolve_sampler`)."""
    resolved = resolve_sampler(sampler, pipe)
    if resolved.scheduler == "default":
        return resolved
    import diffusers

    cls = {
        "ddim": diffusers.DDIMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "dpm++": diffusers.DPMSolverMultistepScheduler,
    }[resolved.scheduler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return resolved


def native_size(pipe: Any) -> int:
    """The image size a pipeline makes by default: its denoiser's sample size (FLUX: the pipeline's) in pixels."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    sample_size = getattr(denoiser.config, "sample_size", None) or getattr(pipe, "default_sample_size", 128)
    return int(sample_size * pipe.vae_scale_factor)


def size_multiple(pipe: Any) -> int:
    """Image sides a pipeline can make are multiples of this: the VAE factor x the UNet's downsampling (SD, SDXL),
    x 2 for FLUX's 2x2 latent packing, x the patch size for SD3.

    The same numbers as the trainer's :meth:`~brandtune.training.families.FamilyOps.resolution_multiple`, read from
    the loaded components instead of the folder's config files.
    """
    factor = int(pipe.vae_scale_factor)
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return factor * 2 ** (len(unet.config.block_out_channels) - 1)
    patch = int(getattr(pipe.transformer.config, "patch_size", 1) or 1)
    return factor * (2 * patch if pipeline_kind(pipe).startswith("flux") else patch)


def aspect_samplers(
    pipe: Any, sampler: SamplerConfig, aspects: Sequence[str | None]
) -> list[tuple[str | None, SamplerConfig]]:
    """One ``(aspect, sampler)`` per aspect, each sampler's width and height the aspect's size for ``pipe``.

    The size is :func:`~brandtune.config.brand.aspect_size` at the pipeline's native square size and its
    :func:`size_multiple`, so ``"1:1"`` is the native size. An explicit ``sampler.width`` or ``height`` wins: then
    there is one entry, ``(None, sampler)``, whatever the aspects.
    """
    from brandtune.config.aspects import aspect_size

    if sampler.width is not None or sampler.height is not None:
        unused = [a for a in aspects if a and a != "1:1"]
        if unused:
            logger.info("sampler width/height given: aspects %s are not used", ", ".join(unused))
        return [(None, sampler)]
    side, multiple = native_size(pipe), size_multiple(pipe)
    out = []
    for aspect in aspects:
        width, height = aspect_size(aspect or "1:1", side, multiple)
        out.append((aspect, sampler.model_copy(update={"width": width, "height": height})))
    return out


#: The T5 length the adapter loaded into a pipeline was trained with (:func:`use_sequence_length`).
_TRAINED_LENGTH: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def use_sequence_length(pipe: Any, length: int | None) -> None:
    """Sample ``pipe`` with ``length`` T5 tokens per prompt (an adapter's, set when it is loaded); None: the default."""
    if length is None:
        _TRAINED_LENGTH.pop(pipe, None)
    else:
        _TRAINED_LENGTH[pipe] = int(length)


def call_kwargs(pipe: Any) -> dict[str, Any]:
    """What a pipeline call takes besides prompts and sampler settings: FLUX and SD3 get the T5 length of the
    loaded adapter's training (:func:`use_sequence_length`), else the default training uses
    (:func:`default_sequence_length`)."""
    kind = pipeline_kind(pipe)
    if kind == "unet":
        return {}
    if pipe in _TRAINED_LENGTH:
        return {"max_sequence_length": _TRAINED_LENGTH[pipe]}
    tokenizer = pipe.tokenizer_2 if kind.startswith("flux") else pipe.tokenizer_3
    family = "sd3" if kind == "sd3" else "flux"
    return {"max_sequence_length": default_sequence_length(family, tokenizer.model_max_length)}


def sample_batch(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    sampler: SamplerConfig,
    init_image: Image.Image | None = None,
    strength: float = 0.6,
) -> list[Image.Image]:
    """One pipeline call: ``prompts[i]`` with a generator seeded ``seeds[i]``. Deterministic for the same batch.

    Empty sampler settings take the pipeline family's defaults (:func:`resolve_sampler`); the scheduler is the
    caller's to set (:func:`apply_scheduler`).
    """
    import torch

    sampler = resolve_sampler(sampler, pipe)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "negative_prompt": [sampler.negative_prompt] * len(prompts) if sampler.negative_prompt else None,
        "num_inference_steps": sampler.num_inference_steps,
        "guidance_scale": sampler.guidance_scale,
        "generator": generators,
        **call_kwargs(pipe),
    }
    if init_image is not None:
        from diffusers import AutoPipelineForImage2Image

        img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        image = init_image.convert("RGB").resize((sampler.width, sampler.height))
        return img2img(image=[image] * len(prompts), strength=strength, **kwargs).images
    kwargs.update(width=sampler.width, height=sampler.height)
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
