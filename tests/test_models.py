"""Tests of brandtune.models: builtin builds, resolution, family detection, loading and export."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brandtune.errors import ModelResolutionError, UnsupportedModelError
from brandtune.models import (
    BUILTIN_MODELS,
    ResolvedBase,
    detect_family,
    export_base,
    load_base_pipeline,
    load_components,
    resolve_base,
)
from brandtune.models import builtin as builtin_module
from brandtune.settings import Settings

pytestmark = pytest.mark.usefixtures("torch_threads")

PROMPT = "a photo of acme bottle on a beach at sunset"


_SHIPPED_DIR = builtin_module.shipped_dir


@pytest.fixture(scope="module", autouse=True)
def _from_config() -> Any:
    """These tests exercise the from-config build path, so the shipped pretrained copy is set aside here.

    tests/test_builtin_quality.py checks the shipped weights themselves.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_module, "shipped_dir", lambda spec: None)
        yield


@pytest.fixture(scope="module")
def tiny() -> ResolvedBase:
    """builtin:tiny built from config (random weights), once, into the session's BRANDTUNE_HOME."""
    return resolve_base("builtin:tiny")


@pytest.fixture(scope="module")
def tiny_sdxl() -> ResolvedBase:
    """builtin:tiny-sdxl, built once into the session's BRANDTUNE_HOME."""
    return resolve_base("builtin:tiny-sdxl")


def _generator() -> Any:
    import torch

    return torch.Generator().manual_seed(0)


# --- import --------------------------------------------------------------------------------------------------


def test_import_is_light_and_touches_no_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = (
        "import sys, brandtune.models as m; "
        "heavy = [k for k in sys.modules if k.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'huggingface_hub', 'tokenizers')]; "
        "assert not heavy, heavy; assert m.BUILTIN_MODELS"
    )
    env = {**os.environ, "BRANDTUNE_HOME": str(home)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert not home.exists()


# --- builtin models ------------------------------------------------------------------------------------------


def test_builtin_tiny_resolves(tiny: ResolvedBase) -> None:
    assert list(BUILTIN_MODELS) == ["tiny", "tiny-sdxl"]
    assert all(isinstance(desc, str) and desc for desc in BUILTIN_MODELS.values())
    assert tiny.ref == tiny.name == "builtin:tiny"
    assert tiny.family == "sd1"
    assert tiny.resolution == 64
    assert tiny.pipeline_class == "StableDiffusionPipeline"
    assert tiny.revision.startswith("sha256:") and len(tiny.revision) == 7 + 64
    assert tiny.path.parent == Settings.from_env().models_dir / "builtin"
    assert tiny.path.name.startswith("tiny-") and len(tiny.path.name) == len("tiny-") + 12
    assert (tiny.path / ".complete").is_file()
    assert not list(tiny.path.rglob("*.bin")), "weights must be safetensors only"
    assert tiny.provenance() == {
        "base_model": "builtin:tiny",
        "base_revision": tiny.revision,
        "base_family": "sd1",
    }


def test_builtin_is_cached(tiny: ResolvedBase, monkeypatch: pytest.MonkeyPatch) -> None:
    marker_mtime = (tiny.path / ".complete").stat().st_mtime_ns

    def no_rebuild(*args: object) -> None:
        raise AssertionError("builtin:tiny was rebuilt")

    monkeypatch.setattr(builtin_module, "_build", no_rebuild)
    again = resolve_base("builtin:tiny")
    assert again == tiny
    assert (tiny.path / ".complete").stat().st_mtime_ns == marker_mtime


def test_builtin_build_is_deterministic(
    tiny: ResolvedBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "other-home"))
    other = resolve_base("builtin:tiny")
    assert other.path != tiny.path
    assert other.path.name == tiny.path.name
    assert other.revision == tiny.revision
    assert not [p for p in other.path.parent.iterdir() if p.name != other.path.name], (
        "temp build dir left behind"
    )


def test_builtin_build_race_uses_the_winners_copy(
    tiny: ResolvedBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "race-home"))
    target = builtin_module.builtin_dir(builtin_module.builtin_spec("builtin:tiny"))

    def build_but_lose_the_race(spec: object, dest: Path) -> None:
        shutil.copytree(tiny.path, target)  # another process finishes first, .complete included
        (dest / "model_index.json").write_text("{}")  # this process's copy, which must be dropped

    monkeypatch.setattr(builtin_module, "_build", build_but_lose_the_race)
    assert resolve_base("builtin:tiny").path == target
    assert (target / "model_index.json").read_text() == (tiny.path / "model_index.json").read_text()
    assert [p.name for p in target.parent.iterdir()] == [target.name], "the loser's temp dir was left behind"


def test_tokenizer_covers_caption_words_and_any_text(tiny: ResolvedBase) -> None:
    comps = load_components(tiny)
    (tokenizer,) = comps.tokenizers
    (text_encoder,) = comps.text_encoders
    assert tokenizer.model_max_length == 77
    ids = tokenizer(PROMPT).input_ids
    assert len(ids) == len(PROMPT.split()) + 2, "each caption word is one token"
    assert tokenizer("Zürich, 2026 — 新しい!").input_ids[1:-1], "any text tokenizes"
    assert tokenizer.unk_token_id not in tokenizer("Zürich 新しい").input_ids[1:-1]
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id
    assert text_encoder.config.bos_token_id == tokenizer.bos_token_id
    assert text_encoder.config.vocab_size == len(tokenizer)
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"
    assert comps.unet.config.cross_attention_dim == text_encoder.config.hidden_size


def test_load_base_pipeline_generates(tiny: ResolvedBase) -> None:
    pipe = load_base_pipeline(tiny)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)


def test_exported_tiny_loads_with_plain_diffusers(tiny: ResolvedBase, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    dest = export_base("builtin:tiny", tmp_path / "tiny-export")
    assert dest == tmp_path / "tiny-export"
    assert not (dest / ".complete").exists()
    # transformers-4 style tokenizer files are there too
    assert (dest / "tokenizer" / "vocab.json").is_file() and (dest / "tokenizer" / "merges.txt").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(dest)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)

    local = resolve_base(str(dest))
    assert local.name == "tiny-export"
    assert local.path == dest
    assert local.family == "sd1"
    assert local.revision == tiny.revision, "an exported copy has the content revision of its source"


def test_export_refuses_non_empty_dest(tiny: ResolvedBase, tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(ModelResolutionError, match=r"not empty.*overwrite=True"):
        export_base("builtin:tiny", dest)
    assert (dest / "notes.txt").read_text() == "keep me"
    export_base("builtin:tiny", dest, overwrite=True)
    assert not (dest / "notes.txt").exists()
    assert (dest / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "taken"], "temp export dir left behind"


def test_builtin_tiny_sdxl_generates(tiny_sdxl: ResolvedBase) -> None:
    from diffusers import StableDiffusionXLPipeline

    assert tiny_sdxl.family == "sdxl"
    assert tiny_sdxl.pipeline_class == "StableDiffusionXLPipeline"
    assert tiny_sdxl.resolution == 64
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.path)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)

    comps = load_components(tiny_sdxl)
    assert [type(m).__name__ for m in comps.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert len(comps.tokenizers) == 2
    hidden = sum(m.config.hidden_size for m in comps.text_encoders)
    assert comps.unet.config.cross_attention_dim == hidden
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"


# --- family detection ----------------------------------------------------------------------------------------


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
        ("FluxPipeline", None, "FluxPipeline"),
        ("StableDiffusion3Pipeline", None, "StableDiffusion3Pipeline"),
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
    folder = _fake_model(tmp_path / "flux", "FluxPipeline")
    with pytest.raises(
        UnsupportedModelError, match=r"FluxPipeline.*SD 1\.x \(sd1\), SD 2\.x \(sd2\) and SDXL"
    ):
        resolve_base(str(folder))


def test_resolve_refuses_pickle_only_weights(tmp_path: Path) -> None:
    folder = _fake_model(tmp_path / "old-sd")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelResolutionError, match=r"no \*\.safetensors weights in unet/"):
        resolve_base(str(folder))


# --- bad references ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["builtin:nope", "./no/such/folder", "", "not a ref at all"])
def test_unknown_refs_list_the_builtins(ref: str) -> None:
    with pytest.raises(ModelResolutionError) as info:
        resolve_base(ref)
    message = str(info.value)
    assert repr(ref) in message
    assert "builtin:tiny" in message and "builtin:tiny-sdxl" in message


def test_folder_without_model_index(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelResolutionError, match=r"no model_index\.json"):
        resolve_base(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelResolutionError, match=r"is a file, not a folder"):
        resolve_base(str(weights))


def test_hub_id_offline_fails_clearly_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelResolutionError) as info:
        resolve_base("acme-labs/sd-turbo-xl@main")
    message = str(info.value)
    assert "'acme-labs/sd-turbo-xl@main'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local diffusers folder" in message and "brandtune base export" in message


def test_hub_id_from_local_hub_cache(
    tiny: ResolvedBase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The hub path end to end, offline: a snapshot already in the HF cache resolves to its commit."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme-labs--tiny-sd"
    shutil.copytree(tiny.path, repo / "snapshots" / commit, ignore=shutil.ignore_patterns(".*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    resolved = resolve_base("acme-labs/tiny-sd")
    assert resolved.name == "acme-labs/tiny-sd"
    assert resolved.revision == commit
    assert resolved.family == "sd1"
    assert resolve_base(f"acme-labs/tiny-sd@{commit}").path == resolved.path
