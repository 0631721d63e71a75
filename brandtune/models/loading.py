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
from brandtune.models.family import FAMILY_INFO, FamilyInfo
from brandtune.models.resolve import ResolvedBase
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseComponents:
    """The parts of a base model that training needs, loaded separately.

    Attributes:
        resolved: The base they were loaded from.
        denoiser: The model that carries the LoRA: the UNet (SD 1.x/2.x, SDXL) or the transformer (FLUX, SD3).
        vae: The autoencoder (images <-> latents).
        text_encoders: The family's text encoders in the pipeline's order (:data:`~brandtune.models.family.FAMILY_INFO`):
            one for SD 1.x/2.x, two for SDXL (CLIP, CLIP-G) and FLUX (CLIP-L, T5), three for SD3 (CLIP-L, CLIP-G, T5).
        tokenizers: The matching tokenizers, in the same order.
        noise_scheduler: The training schedule built from the model's scheduler config: a ``DDPMScheduler`` for the
            UNet families, the model's ``FlowMatchEulerDiscreteScheduler`` for the flow-matching ones.
    """

    resolved: ResolvedBase
    denoiser: torch.nn.Module
    vae: AutoencoderKL
    text_encoders: tuple[torch.nn.Module, ...]
    tokenizers: tuple[Any, ...]
    noise_scheduler: Any

    @property
    def info(self) -> FamilyInfo:
        return FAMILY_INFO[self.resolved.family]


def pipeline_extras(family: str) -> dict[str, Any]:
    """What a family's ``from_pretrained`` needs besides weights: SD 1.x/2.x load without their safety checker."""
    return {"safety_checker": None, "requires_safety_checker": False} if family in {"sd1", "sd2"} else {}


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
        The family's pipeline: ``StableDiffusionPipeline`` (sd1, sd2), ``StableDiffusionXLPipeline`` (sdxl),
        ``FluxPipeline`` (flux) or ``StableDiffusion3Pipeline`` (sd3).
    """
    _quiet.install()  # before diffusers' pipeline modules import transformers' image processors
    import diffusers

    pipeline_cls = getattr(diffusers, resolved.pipeline_class)
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    kwargs.update(pipeline_extras(resolved.family))
    with _quiet.loading_bars_off():
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
    """Load the denoiser, VAE, text encoders, tokenizers and the training noise schedule of a resolved base.

    Args:
        resolved: The base, from :func:`resolve_base`.
        torch_dtype: Weight dtype of the models; the saved dtype when omitted.
        device: Where to move the models; left on the CPU when omitted.

    Returns:
        The components, models in eval mode with gradients still enabled (training decides what to freeze).
    """
    _quiet.install()
    import diffusers
    import transformers

    info = FAMILY_INFO[resolved.family]
    path = resolved.path
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    with _quiet.loading_bars_off():
        denoiser = getattr(diffusers, info.denoiser_cls).from_pretrained(
            path, subfolder=info.denoiser, **kwargs
        )
        vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs)
        text_encoders = tuple(
            getattr(transformers, enc.cls).from_pretrained(path, subfolder=enc.folder, **kwargs)
            for enc in info.text_encoders
        )
    tokenizers = tuple(
        getattr(transformers, enc.tokenizer_cls).from_pretrained(path, subfolder=enc.tokenizer_folder)
        for enc in info.text_encoders
    )
    if info.flow_matching:
        noise_scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
            path, subfolder="scheduler"
        )
    else:
        noise_scheduler = diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for model in [denoiser, vae, *text_encoders]:
        model.eval()
        if device is not None:
            model.to(device)
    return BaseComponents(
        resolved=resolved,
        denoiser=denoiser,
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


def check_adapter_family(pipe: DiffusionPipeline, folder: Path, components: set[str]) -> dict[str, Any]:
    """Refuse an adapter of one family on a base of another (an SDXL adapter on a FLUX base), before loading.

    The adapter's ``brandtune.json`` names the family it was trained on; a file without one (a plain diffusers
    LoRA) is checked by its key prefixes: the denoiser it adapts must be the pipeline's.

    Returns:
        The adapter's provenance (empty without a readable ``brandtune.json``).

    Raises:
        ConfigError: the adapter does not belong on this pipeline.
    """
    import json

    pipe_class = type(pipe).__name__
    provenance: dict[str, Any] = {}
    if (folder / PROVENANCE_NAME).is_file():
        try:
            provenance = json.loads((folder / PROVENANCE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            provenance = {}
    provenance = provenance if isinstance(provenance, dict) else {}
    family = provenance.get("base_family")
    if family in FAMILY_INFO:
        info = FAMILY_INFO[family]
        compatible = (
            pipe_class.replace("Img2Img", "") == info.pipeline_class
        )  # an img2img view of the base too
        if not compatible:
            raise ConfigError(
                f"adapter {folder} was trained on a {info.label} base ({info.pipeline_class}) and cannot load into a "
                f"{pipe_class}; load it onto a {info.label} base, or use an adapter trained on this base's family"
            )
    denoisers = {"unet", "transformer"} & components
    if denoisers and not any(hasattr(pipe, name) and getattr(pipe, name) is not None for name in denoisers):
        raise ConfigError(
            f"adapter {folder} adapts a {'/'.join(sorted(denoisers))}, which a {pipe_class} does not have: it was "
            "trained on a base of another family; use an adapter trained on this base's family"
        )
    return provenance


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
    very calls ``load_lora_weights`` makes for the UNet, so the effect is the same). A transformer-only file (FLUX,
    SD3) goes through ``load_lora_weights`` whole, with just that note quieted (``_quiet.NO_TEXT_ENCODER_KEYS``);
    any other file (one with a text-encoder part from ``train_text_encoder``, or a kohya layout) goes through
    ``load_lora_weights`` whole. An adapter of another family than the pipeline's is refused first.

    Args:
        pipe: A diffusers pipeline with LoRA support (SD, SDXL, FLUX or SD3).
        folder: The adapter folder (``pytorch_lora_weights.safetensors`` and ``brandtune.json``).
        adapter_name: The peft adapter name (diffusers picks ``default_N`` when omitted).
        weight_name: The weights file inside ``folder``.

    Raises:
        ConfigError: ``folder`` has no such weights file, or its adapter was trained on a base of another family.
    """
    weights = Path(folder) / weight_name
    if not weights.is_file():
        raise ConfigError(
            f"adapter folder {folder} has no {weight_name}: give a folder written by `brandtune train` "
            "(or `brandtune pull`)"
        )
    components = adapter_components(weights)
    provenance = check_adapter_family(pipe, Path(folder), components)
    from brandtune.sampling import use_sequence_length

    length = provenance.get("max_sequence_length")  # FLUX, SD3: sample with the T5 length it was trained with
    use_sequence_length(pipe, length if isinstance(length, int) and 0 < length <= 4096 else None)
    if components == {"unet"} and hasattr(pipe, "load_lora_into_unet"):
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
    elif components == {"transformer"}:  # FLUX, SD3: their loader whole, less its note on the text encoders
        with _quiet.quieted_while(_quiet.NO_TEXT_ENCODER_KEYS):
            pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)
    else:
        pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)
    logger.debug("loaded adapter %s (%s) as %s", folder, weight_name, adapter_name or "default")
