"""brandtune.models.family: which family a diffusers folder is, and the folders resolution refuses for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from brandtune.errors import ModelResolutionError, UnsupportedModelError
from brandtune.models import ResolvedBase, detect_family, resolve_base

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


def _fake_model(
    root: Path,
    class_name: str = "StableDiffusionPipeline",
    unet: dict[str, Any] | None = None,
    text_encoder: dict[str, Any] | None = None,
    extra_index: dict[str, Any] | None = None,
) -> Path:
    """A diffusers folder with configs only (no weights): enough for family detection."""
    root.mkdir(parents=True)
    index: dict[str, Any] = {
        "_class_name": class_name,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        **(extra_index or {}),
    }
    (root / "model_index.json").write_text(json.dumps(index))
    configs = {
        "unet": {"in_channels": 4, "sample_size": 64, "cross_attention_dim": 768, **(unet or {})},
        "vae": {"block_out_channels": [128, 256, 512, 512]},
        "text_encoder": {"hidden_act": "quick_gelu", **(text_encoder or {})},
    }
    for name, config in configs.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("class_name", "unet", "text_encoder", "family"),
    [
        ("StableDiffusionPipeline", {"cross_attention_dim": 768}, None, "sd1"),
        ("StableDiffusionImg2ImgPipeline", {"cross_attention_dim": 768}, None, "sd1"),
        ("StableDiffusionPipeline", {"cross_attention_dim": 1024}, {"hidden_act": "gelu"}, "sd2"),
        ("StableDiffusionPipeline", {"cross_attention_dim": 48}, {"hidden_act": "gelu"}, "sd2"),
        ("StableDiffusionPipeline", {"cross_attention_dim": 48}, None, "sd1"),
        (
            "StableDiffusionXLPipeline",
            {"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
            None,
            "sdxl",
        ),
    ],
)
def test_detect_family(
    tmp_path: Path, class_name: str, unet: dict[str, Any], text_encoder: dict[str, Any] | None, family: str
) -> None:
    folder = _fake_model(tmp_path / "m", class_name, unet, text_encoder)
    assert detect_family(folder) == family


def test_detect_family_of_builtins(tiny: ResolvedBase, tiny_sdxl: ResolvedBase) -> None:
    assert detect_family(tiny.path) == "sd1"
    assert detect_family(tiny_sdxl.path) == "sdxl"


@pytest.mark.parametrize(
    ("class_name", "unet", "found"),
    [
        ("KandinskyV22Pipeline", None, "KandinskyV22Pipeline"),
        ("StableDiffusionPipeline", {"in_channels": 9}, "9 input channels"),
        ("StableDiffusionXLPipeline", {"cross_attention_dim": 2048}, "inconsistent"),
    ],
)
def test_detect_family_unsupported(
    tmp_path: Path, class_name: str, unet: dict[str, Any] | None, found: str
) -> None:
    folder = _fake_model(tmp_path / "m", class_name, unet)
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(folder)
    message = str(info.value)
    assert found in message
    assert "sd1" in message or "inconsistent" in message


def test_resolve_unsupported_local_folder(tmp_path: Path) -> None:
    folder = _fake_model(tmp_path / "kandinsky", "KandinskyV22Pipeline")
    with pytest.raises(UnsupportedModelError, match=r"KandinskyV22Pipeline.*SD 1\.x \(sd1\).*FLUX.*SD3"):
        resolve_base(str(folder))


_FLOW_PARTS: dict[str, dict[str, tuple[str, str]]] = {
    "FluxPipeline": {
        "transformer": ("diffusers", "FluxTransformer2DModel"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"),
        "text_encoder_2": ("transformers", "T5EncoderModel"),
        "tokenizer_2": ("transformers", "T5TokenizerFast"),
    },
    "StableDiffusion3Pipeline": {
        "transformer": ("diffusers", "SD3Transformer2DModel"),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer": ("transformers", "CLIPTokenizer"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer_2": ("transformers", "CLIPTokenizer"),
        "text_encoder_3": ("transformers", "T5EncoderModel"),
        "tokenizer_3": ("transformers", "T5TokenizerFast"),
    },
}


def _fake_flow_model(
    root: Path, class_name: str, drop: str | None = None, in_channels: int | None = None
) -> Path:
    """A FLUX or SD3 folder with configs only: every component of the family (less ``drop``)."""
    parts = {k: list(v) for k, v in _FLOW_PARTS[class_name].items() if k != drop}
    root.mkdir(parents=True)
    index = {"_class_name": class_name, "vae": ["diffusers", "AutoencoderKL"], **parts}
    (root / "model_index.json").write_text(json.dumps(index))
    latent = 16
    default_in = latent * 4 if class_name == "FluxPipeline" else latent
    for name in [*parts, "vae"]:
        (root / name).mkdir()
        config = {"latent_channels": latent} if name == "vae" else {}
        if name == "transformer":
            config = {"in_channels": in_channels or default_in}
        (root / name / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("class_name", "family"), [("FluxPipeline", "flux"), ("StableDiffusion3Pipeline", "sd3")]
)
def test_detect_flow_families(tmp_path: Path, class_name: str, family: str) -> None:
    assert detect_family(_fake_flow_model(tmp_path / "m", class_name)) == family


@pytest.mark.parametrize(
    ("class_name", "drop", "found"),
    [
        ("FluxPipeline", "tokenizer_2", "without its T5 tokenizer"),
        ("FluxPipeline", "text_encoder_2", "without text_encoder_2"),
        ("FluxPipeline", "transformer", "without transformer"),
        ("StableDiffusion3Pipeline", "tokenizer_3", "without its T5 tokenizer"),
        ("StableDiffusion3Pipeline", "text_encoder_2", "without text_encoder_2"),
    ],
)
def test_flow_folder_missing_a_component(tmp_path: Path, class_name: str, drop: str, found: str) -> None:
    with pytest.raises(UnsupportedModelError, match=found):
        detect_family(_fake_flow_model(tmp_path / "m", class_name, drop=drop))


def test_flux_control_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"takes 384 input channels.*text-to-image"):
        detect_family(_fake_flow_model(tmp_path / "fill", "FluxPipeline", in_channels=384))


def test_resolve_refuses_pickle_only_weights(tmp_path: Path) -> None:
    folder = _fake_model(tmp_path / "old-sd")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelResolutionError, match=r"no \*\.safetensors weights in unet/"):
        resolve_base(str(folder))
