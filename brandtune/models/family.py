"""Which architecture family a diffusers folder holds, and what brandtune knows about each family.

brandtune trains LoRA adapters for five families:

- ``sd1`` (SD 1.x: OpenAI CLIP ViT-L text encoder, cross-attention dim 768),
- ``sd2`` (SD 2.x: OpenCLIP ViT-H, cross-attention dim 1024),
- ``sdxl`` (SDXL base: two text encoders, ``addition_embed_type="text_time"``),
- ``flux`` (FLUX.1-dev and -schnell: ``FluxTransformer2DModel``, CLIP-L pooled + T5, flow matching),
- ``sd3`` (SD3 and SD3.5 medium/large: ``SD3Transformer2DModel``, CLIP-L + CLIP-G + T5, flow matching).

The first three share a UNet and the DDPM objective, the last two a transformer and the flow-matching objective;
:data:`FAMILY_INFO` holds each family's parts (which folder holds what, with which class) so that loading, training
and sampling read them from one table.

The rules, in order:

1. ``model_index.json``'s ``_class_name`` must be one of the supported text-to-image pipelines; anything else
   (Kandinsky, inpainting, ...) is unsupported.
2. FLUX and SD3 folders must name their transformer, VAE, every text encoder and tokenizer (T5 included), each
   of the class the family uses; a missing one is named.
3. The UNet must be a ``UNet2DConditionModel`` with 4 input channels (inpainting and pix2pix UNets are not).
4. ``unet.config.addition_embed_type == "text_time"`` means SDXL; the pipeline class must agree, and an SDXL folder
   without a first text encoder (the refiner) is unsupported.
5. Otherwise cross-attention dim 768 is ``sd1`` and 1024 is ``sd2``; for other sizes (tiny test models) the text
   encoder decides: ``hidden_act == "gelu"`` (OpenCLIP) is ``sd2``, anything else (``quick_gelu``) ``sd1``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from brandtune.errors import ModelResolutionError, UnsupportedModelError

Family = Literal["sd1", "sd2", "sdxl", "flux", "sd3"]
FAMILIES: tuple[Family, ...] = ("sd1", "sd2", "sdxl", "flux", "sd3")


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family: its folder and class, and its tokenizer's."""

    folder: str
    cls: str
    tokenizer_folder: str
    tokenizer_cls: str


@dataclass(frozen=True)
class FamilyInfo:
    """The static facts of a family (no weights, no imports of torch).

    Attributes:
        name: The family.
        label: How messages and docs name it.
        pipeline_class: The diffusers text-to-image pipeline class brandtune loads.
        denoiser: The folder (and pipeline attribute) of the model that carries the LoRA: ``unet`` or
            ``transformer``.
        denoiser_cls: Its diffusers class.
        text_encoders: The text encoders and tokenizers, in the pipeline's order.
        flow_matching: Whether the family trains with the flow-matching objective (else DDPM noise prediction).
    """

    name: Family
    label: str
    pipeline_class: str
    denoiser: str
    denoiser_cls: str
    text_encoders: tuple[TextEncoderSpec, ...]
    flow_matching: bool

    @property
    def components(self) -> tuple[str, ...]:
        """The component folders that hold weights."""
        return (self.denoiser, "vae", *(t.folder for t in self.text_encoders))


_CLIP = TextEncoderSpec("text_encoder", "CLIPTextModel", "tokenizer", "CLIPTokenizer")
_CLIP_PROJ_2 = TextEncoderSpec(
    "text_encoder_2", "CLIPTextModelWithProjection", "tokenizer_2", "CLIPTokenizer"
)

FAMILY_INFO: dict[Family, FamilyInfo] = {
    "sd1": FamilyInfo(
        "sd1", "SD 1.x", "StableDiffusionPipeline", "unet", "UNet2DConditionModel", (_CLIP,), False
    ),
    "sd2": FamilyInfo(
        "sd2", "SD 2.x", "StableDiffusionPipeline", "unet", "UNet2DConditionModel", (_CLIP,), False
    ),
    "sdxl": FamilyInfo(
        "sdxl",
        "SDXL",
        "StableDiffusionXLPipeline",
        "unet",
        "UNet2DConditionModel",
        (_CLIP, _CLIP_PROJ_2),
        False,
    ),
    "flux": FamilyInfo(
        "flux",
        "FLUX.1",
        "FluxPipeline",
        "transformer",
        "FluxTransformer2DModel",
        (_CLIP, TextEncoderSpec("text_encoder_2", "T5EncoderModel", "tokenizer_2", "T5TokenizerFast")),
        True,
    ),
    "sd3": FamilyInfo(
        "sd3",
        "SD3/SD3.5",
        "StableDiffusion3Pipeline",
        "transformer",
        "SD3Transformer2DModel",
        (
            TextEncoderSpec("text_encoder", "CLIPTextModelWithProjection", "tokenizer", "CLIPTokenizer"),
            _CLIP_PROJ_2,
            TextEncoderSpec("text_encoder_3", "T5EncoderModel", "tokenizer_3", "T5TokenizerFast"),
        ),
        True,
    ),
}
#: The text-to-image class brandtune loads for each family.
PIPELINE_CLASS: dict[Family, str] = {name: info.pipeline_class for name, info in FAMILY_INFO.items()}

SD_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
SDXL_PIPELINES = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"})
FLOW_PIPELINES: dict[str, Family] = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}
SUPPORTED = (
    "SD 1.x (sd1), SD 2.x (sd2), SDXL base (sdxl), FLUX.1-dev/-schnell (flux) and SD3/SD3.5 (sd3) text-to-image "
    "pipelines"
)
#: The pipeline classes a T5 tokenizer may be saved as (transformers writes the fast class, older stacks the slow).
_T5_TOKENIZERS = frozenset({"T5TokenizerFast", "T5Tokenizer"})


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
        ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"flux"`` or ``"sd3"``.

    Raises:
        ModelResolutionError: The folder lacks ``model_index.json`` or a component's ``config.json``.
        UnsupportedModelError: The folder holds a model of another family.
    """
    folder = Path(path)
    index = read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name", "<no _class_name>"))
    if class_name in FLOW_PIPELINES:
        return _check_flow_folder(folder, index, FLOW_PIPELINES[class_name])
    if class_name not in SD_PIPELINES | SDXL_PIPELINES:
        raise UnsupportedModelError(
            f"{folder} holds a {class_name}; brandtune supports {SUPPORTED}. "
            "Use one of those base models, or builtin:tiny."
        )
    unet_class = _component_class(index, "unet")
    if unet_class != "UNet2DConditionModel":
        raise UnsupportedModelError(
            f"{folder} is a {class_name} whose unet is {unet_class!r}, not a UNet2DConditionModel; "
            f"brandtune supports {SUPPORTED}."
        )
    unet = read_json(folder / "unet" / "config.json")
    in_channels = unet.get("in_channels", 4)
    vae_path = folder / "vae" / "config.json"
    latent_channels = read_json(vae_path).get("latent_channels", 4) if vae_path.is_file() else 4
    if in_channels != latent_channels:  # text-to-image UNets take exactly the VAE's latents
        raise UnsupportedModelError(
            f"{folder} has a UNet with {in_channels} input channels for {latent_channels}-channel latents (an "
            f"inpainting or instruct-pix2pix model); brandtune trains text-to-image LoRAs on {SUPPORTED}, "
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


def _check_flow_folder(folder: Path, index: dict[str, Any], family: Family) -> Family:
    """A FLUX or SD3 folder must name each component of its family with the family's class, and hold it."""
    info = FAMILY_INFO[family]
    expected = [(info.denoiser, {info.denoiser_cls}), ("vae", {"AutoencoderKL"})]
    for enc in info.text_encoders:
        expected.append((enc.folder, {enc.cls}))
        tokenizers = (
            _T5_TOKENIZERS
            if enc.tokenizer_cls == "T5TokenizerFast"
            else {"CLIPTokenizer", "CLIPTokenizerFast"}
        )
        expected.append((enc.tokenizer_folder, set(tokenizers)))
    for name, classes in expected:
        found = _component_class(index, name)
        if found is None or not (folder / name).is_dir():
            what = (
                "its T5 tokenizer"
                if name in {"tokenizer_2", "tokenizer_3"} and "T5Tokenizer" in classes
                else name
            )
            raise UnsupportedModelError(
                f"{folder} is a {info.pipeline_class} without {what} ({name}/ with a {' or '.join(sorted(classes))}); "
                f"brandtune trains {info.label} with every component of the pipeline. Download the complete model "
                "(or export it again with save_pretrained) so that the folder has it."
            )
        if found not in classes:
            raise UnsupportedModelError(
                f"{folder}: the {name} of this {info.pipeline_class} is a {found}, not a "
                f"{' or '.join(sorted(classes))}; brandtune supports {SUPPORTED}."
            )
    vae = read_json(folder / "vae" / "config.json")
    denoiser = read_json(folder / info.denoiser / "config.json")
    latent_channels = vae.get("latent_channels", 16)
    packed = 4 if family == "flux" else 1  # FLUX's transformer takes 2x2 patches of latents, packed
    if denoiser.get("in_channels") != latent_channels * packed:
        raise UnsupportedModelError(
            f"{folder}: its transformer takes {denoiser.get('in_channels')} input channels, not the "
            f"{latent_channels * packed} a text-to-image {info.label} model takes for {latent_channels}-channel "
            "latents (a Fill, Depth, Canny or other control model?); brandtune trains text-to-image LoRAs."
        )
    return family
