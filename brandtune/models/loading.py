"""Load a resolved base model: the whole diffusers pipeline, or its parts for training.

Weights are always read from safetensors (``use_safetensors=True``); the safety checker is never loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune import _quiet
from brandtune.errors import ConfigError
from brandtune.models.resolve import ResolvedBase
from brandtune.provenance import WEIGHTS_NAME

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
    _quiet.install()  # before diffusers' pipeline modules import transformers' image processors
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
    _quiet.install()
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


def adapter_components(weights: Path) -> set[str]:
    """The pipeline components a diffusers-format LoRA file holds weights for (``{"unet", "text_encoder"}``).

    Read from the safetensors header only (no tensor is loaded). A key without a component prefix (a kohya or
    other non-diffusers layout) counts as ``""``.
    """
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
    return {key.split(".", 1)[0] if "." in key else "" for key in keys}


def load_adapter(
    pipe: DiffusionPipeline,
    folder: Path | str,
    *,
    adapter_name: str | None = None,
    weight_name: str = WEIGHTS_NAME,
) -> None:
    """Load a LoRA adapter folder into a pipeline, into only the components it has weights for.

    ``pipe.load_lora_weights`` offers every adapter to every text encoder too, and for a UNet-only adapter
    (brandtune's default) diffusers then warns "No LoRA keys associated to CLIPTextModel found" on every load. A
    UNet-only file therefore takes the pipeline's own UNet path (``lora_state_dict`` + ``load_lora_into_unet``, the
    very calls ``load_lora_weights`` makes for the UNet, so the effect is the same); any other file (one with a
    text-encoder part from ``train_text_encoder``, or a kohya layout) goes through ``load_lora_weights`` whole.

    Args:
        pipe: A diffusers pipeline with LoRA support (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``).
        folder: The adapter folder (``pytorch_lora_weights.safetensors`` and ``brandtune.json``).
        adapter_name: The peft adapter name (diffusers picks ``default_N`` when omitted).
        weight_name: The weights file inside ``folder``.

    Raises:
        ConfigError: ``folder`` has no such weights file.
    """
    weights = Path(folder) / weight_name
    if not weights.is_file():
        raise ConfigError(
            f"adapter folder {folder} has no {weight_name}: give a folder written by `brandtune train` "
            "(or `brandtune pull`)"
        )
    if adapter_components(weights) == {"unet"} and hasattr(pipe, "load_lora_into_unet"):
        from diffusers.loaders import lora_pipeline

        state_dict, alphas, metadata = pipe.lora_state_dict(
            str(folder), weight_name=weight_name, return_lora_metadata=True
        )
        pipe.load_lora_into_unet(
            state_dict,
            network_alphas=alphas,
            unet=pipe.unet,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=pipe,
            low_cpu_mem_usage=getattr(
                lora_pipeline, "_LOW_CPU_MEM_USAGE_DEFAULT_LORA", False
            ),  # as load_lora_weights
        )
    else:
        pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)
    logger.debug("loaded adapter %s (%s) as %s", folder, weight_name, adapter_name or "default")
