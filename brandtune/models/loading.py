"""Load a resolved base model: the whole diffusers pipeline, or its parts for training.

Weights are always read from safetensors (``use_safetensors=True``); the safety checker is never loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brandtune.models.resolve import ResolvedBase

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseComponents:
    """The parts of a base model that training needs, loaded separately.

    Attributes:
        resolved: The base they were loaded from.
        unet: The denoiser.
        vae: The autoencoder (images <-> latents).
        text_encoders: ``(text_encoder,)`` for SD 1.x/2.x, ``(text_encoder, text_encoder_2)`` for SDXL.
        tokenizers: The matching tokenizers, in the same order.
        noise_scheduler: A ``DDPMScheduler`` built from the model's scheduler config (for adding noise).
    """

    resolved: ResolvedBase
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple[CLIPTextModel | CLIPTextModelWithProjection, ...]
    tokenizers: tuple[CLIPTokenizer, ...]
    noise_scheduler: DDPMScheduler


def load_base_pipeline(
    resolved: ResolvedBase,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | None = None,
    progress_bar: bool = False,
) -> DiffusionPipeline:
    """Load the text-to-image pipeline of a resolved base.

    Args:
        resolved: The base, from :func:`resolve_base`.
        torch_dtype: Weight dtype (e.g. ``torch.float16`` on a GPU); the saved dtype when omitted.
        device: Where to move the pipeline (``"cpu"``, ``"cuda"``, ...); left on the CPU when omitted.
        progress_bar: Whether the pipeline shows its denoising progress bar.

    Returns:
        A ``StableDiffusionPipeline`` (sd1, sd2) or ``StableDiffusionXLPipeline`` (sdxl).
    """
    import diffusers

    pipeline_cls = getattr(diffusers, resolved.pipeline_class)
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if resolved.family != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = pipeline_cls.from_pretrained(resolved.path, **kwargs)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress_bar)
    logger.debug("loaded %s (%s) from %s", resolved.name, resolved.pipeline_class, resolved.path)
    return pipe


def load_components(
    resolved: ResolvedBase,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | None = None,
) -> BaseComponents:
    """Load the UNet, VAE, text encoders, tokenizers and a DDPM noise scheduler of a resolved base.

    Args:
        resolved: The base, from :func:`resolve_base`.
        torch_dtype: Weight dtype of the models; the saved dtype when omitted.
        device: Where to move the models; left on the CPU when omitted.

    Returns:
        The components, models in eval mode with gradients still enabled (training decides what to freeze).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = resolved.path
    dtype_kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True, **dtype_kwargs)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", use_safetensors=True, **dtype_kwargs)
    encoder_classes: list[tuple[str, str, Any]] = [("text_encoder", "tokenizer", CLIPTextModel)]
    if resolved.family == "sdxl":
        encoder_classes.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
    text_encoders = tuple(
        cls.from_pretrained(path, subfolder=enc, use_safetensors=True, **dtype_kwargs)
        for enc, _, cls in encoder_classes
    )
    tokenizers = tuple(CLIPTokenizer.from_pretrained(path, subfolder=tok) for _, tok, _ in encoder_classes)
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    models = [unet, vae, *text_encoders]
    for model in models:
        model.eval()
        if device is not None:
            model.to(device)
    return BaseComponents(
        resolved=resolved,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
    )
