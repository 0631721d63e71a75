"""Which architecture family a diffusers folder holds.

brandtune trains LoRA adapters for three families, all ``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text
encoders:

- ``sd1`` (SD 1.x: OpenAI CLIP ViT-L text encoder, cross-attention dim 768),
- ``sd2`` (SD 2.x: OpenCLIP ViT-H, cross-attention dim 1024),
- ``sdxl`` (SDXL base: two text encoders, ``addition_embed_type="text_time"``).

The rules, in order:

1. ``model_index.json``'s ``_class_name`` must be a Stable Diffusion or SDXL text-to-image/img2img pipeline;
   anything else (Flux, SD3, Kandinsky, inpainting, ...) is unsupported.
2. The UNet must be a ``UNet2DConditionModel`` with 4 input channels (inpainting and pix2pix UNets are not).
3. ``unet.config.addition_embed_type == "text_time"`` means SDXL; the pipeline class must agree, and an SDXL folder
   without a first text encoder (the refiner) is unsupported.
4. Otherwise cross-attention dim 768 is ``sd1`` and 1024 is ``sd2``; for other sizes (tiny test models) the text
   encoder decides: ``hidden_act == "gelu"`` (OpenCLIP) is ``sd2``, anything else (``quick_gelu``) ``sd1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from brandtune.errors import ModelResolutionError, UnsupportedModelError

Family = Literal["sd1", "sd2", "sdxl"]
FAMILIES: tuple[Family, ...] = ("sd1", "sd2", "sdxl")

SD_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
SDXL_PIPELINES = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"})
# The text-to-image class brandtune loads for each family.
PIPELINE_CLASS: dict[Family, str] = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
_SUPPORTED = "SD 1.x (sd1), SD 2.x (sd2) and SDXL base (sdxl) text-to-image pipelines"


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from a model folder, with an error that names the file.

    Raises:
        ModelResolutionError: The file is missing or is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelResolutionError(
            f"{path} is missing: a diffusers model folder needs model_index.json and a config.json in each "
            "component folder (unet/, vae/, text_encoder/, ...). Re-export or re-download the model."
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(
            f"Cannot read {path} as JSON ({exc}); the model folder is damaged."
        ) from exc
    if not isinstance(data, dict):
        raise ModelResolutionError(f"{path} does not hold a JSON object; the model folder is damaged.")
    return data


def _component_class(index: dict[str, Any], name: str) -> str | None:
    entry = index.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[1]:
        return str(entry[1])
    return None


def detect_family(path: Path | str) -> Family:
    """Tell which family the diffusers folder at ``path`` belongs to (rules in the module docstring).

    Args:
        path: A folder with ``model_index.json``.

    Returns:
        ``"sd1"``, ``"sd2"`` or ``"sdxl"``.

    Raises:
        ModelResolutionError: The folder lacks ``model_index.json`` or ``unet/config.json``.
        UnsupportedModelError: The folder holds a model of another family.
    """
    folder = Path(path)
    index = read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name", "<no _class_name>"))
    if class_name not in SD_PIPELINES | SDXL_PIPELINES:
        raise UnsupportedModelError(
            f"{folder} holds a {class_name}; brandtune supports {_SUPPORTED}. "
            "Use a Stable Diffusion 1.x/2.x or SDXL base model, or builtin:tiny."
        )
    unet_class = _component_class(index, "unet")
    if unet_class != "UNet2DConditionModel":
        raise UnsupportedModelError(
            f"{folder} is a {class_name} whose unet is {unet_class!r}, not a UNet2DConditionModel; "
            f"brandtune supports {_SUPPORTED}."
        )
    unet = read_json(folder / "unet" / "config.json")
    in_channels = unet.get("in_channels", 4)
    vae_path = folder / "vae" / "config.json"
    latent_channels = read_json(vae_path).get("latent_channels", 4) if vae_path.is_file() else 4
    if in_channels != latent_channels:  # text-to-image UNets take exactly the VAE's latents
        raise UnsupportedModelError(
            f"{folder} has a UNet with {in_channels} input channels for {latent_channels}-channel latents (an "
            f"inpainting or instruct-pix2pix model); brandtune trains text-to-image LoRAs on {_SUPPORTED}, "
            "whose UNet input is the VAE latent."
        )
    if unet.get("addition_embed_type") == "text_time":
        if class_name not in SDXL_PIPELINES:
            raise UnsupportedModelError(
                f"{folder} declares {class_name} but its UNet has SDXL conditioning (text_time); "
                "the folder is inconsistent. Re-export it with the matching pipeline class."
            )
        if _component_class(index, "text_encoder") is None:
            raise UnsupportedModelError(
                f"{folder} is an SDXL folder with one text encoder (the refiner); brandtune trains on the SDXL "
                "base model. Use stabilityai/stable-diffusion-xl-base-1.0 or a fine-tune of it."
            )
        return "sdxl"
    if class_name in SDXL_PIPELINES:
        raise UnsupportedModelError(
            f"{folder} declares {class_name} but its UNet lacks SDXL's text_time conditioning; "
            "the folder is inconsistent. Re-export it with the matching pipeline class."
        )
    cross_attention_dim = unet.get("cross_attention_dim")
    if cross_attention_dim == 768:
        return "sd1"
    if cross_attention_dim == 1024:
        return "sd2"
    text_config = read_json(folder / "text_encoder" / "config.json")
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"
