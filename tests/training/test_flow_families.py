"""The flow-matching families (FLUX.1, SD3) through brandtune's one training loop, on the built-in tiny FLUX.1-dev
and SD3 architectures (random weights, tokenizers built by brandtune): adapters that plain diffusers loads whole,
the kohya FLUX export, exact resume after a kill, two processes, and the errors caught before any compute."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_helpers import kill_after_checkpoint, quick

from brandtune.errors import ConfigError, TrainingError
from brandtune.training import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads", "acme_dataset")]

FLUX, SD3 = "builtin:tiny-flux", "builtin:tiny-sd3"
PROMPT = "a photo of acme bottle on a beach"


@pytest.fixture(scope="module", params=[FLUX, SD3])
def flow_trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    base = request.param
    out = tmp_path_factory.mktemp("flow")
    cfg = quick(out, base_model=base, max_train_steps=6, learning_rate=1e-2, export_kohya=base == FLUX)
    return base, train(cfg)


def _pipeline(base: str) -> Any:
    import diffusers

    from brandtune.models import resolve_base

    resolved = resolve_base(base)
    pipe = getattr(diffusers, resolved.pipeline_class).from_pretrained(resolved.path, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: Any) -> np.ndarray:
    import torch

    from brandtune.sampling import call_kwargs

    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0), **call_kwargs(pipe))  # fmt: skip
    return out.images[0]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_adapter_changes_generation_and_loads_whole_in_plain_diffusers(
    flow_trained: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from brandtune.models.loading import load_adapter

    base, result = flow_trained
    meta = json.loads((result.adapter_dir / "brandtune.json").read_text())
    assert meta["base_family"] == ("flux" if base == FLUX else "sd3")
    assert "add_q_proj" in meta["target_modules"] and "to_add_out" in meta["target_modules"]
    pipe = _pipeline(base)
    before = _generate(pipe)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(result.adapter_dir), adapter_name="brand")
    # Plain diffusers notes, for every transformer-only LoRA (its own scripts' too), that the file has no part for
    # the text encoders; nothing else. brandtune's own loader says nothing at all (below).
    assert [w for w in _warnings(caplog) if not w.startswith("No LoRA keys associated to")] == []
    saved = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("transformer.") for k in saved)
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="brand")
    # every tensor of the file landed in the transformer, unchanged: nothing dropped, nothing left over
    assert {f"transformer.{k}" for k in loaded} == set(saved)
    for key, value in loaded.items():
        assert (value == saved[f"transformer.{key}"]).all(), key
    after = _generate(pipe)
    assert np.abs(after - before).max() > 1e-3, "the adapter must change the images"
    quiet = _pipeline(base)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_adapter(quiet, result.adapter_dir)
    assert _warnings(caplog) == []
    assert np.array_equal(_generate(quiet), after)


def test_kohya_export_is_written_for_flux(flow_trained: tuple[str, Any]) -> None:
    """The file's layout and that it draws what the diffusers file draws: tests/training/test_kohya_flux.py."""
    from safetensors import safe_open

    base, result = flow_trained
    kohya = result.adapter_dir / "kohya_lora.safetensors"
    if base != FLUX:
        assert not kohya.exists()
        return
    files = json.loads((result.adapter_dir / "brandtune.json").read_text())["files"]
    with safe_open(str(kohya), framework="pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata()
    assert files["kohya_lora.safetensors"] and meta["ss_network_dim"] == "8"
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv.") for k in keys)
    assert any(k.startswith("lora_unet_single_blocks_0_linear1.") for k in keys)


@pytest.mark.parametrize("base", [FLUX, SD3])
def test_kill_and_resume_gives_identical_adapter(tmp_path: Path, base: str) -> None:
    from safetensors.torch import load_file

    common: dict[str, Any] = {"base_model": base, "max_train_steps": 8, "checkpointing_steps": 2, "dropout": 0.1,
                              "random_flip": True, "learning_rate": 5e-3, "num_threads": 1}  # fmt: skip
    reference = train(quick(tmp_path / "ref", **common))
    interrupted = quick(tmp_path / "killed", **common)
    kill_after_checkpoint(interrupted, tmp_path / "cfg.json", step=4)
    resumed = train(interrupted.model_copy(update={"resume": "latest"}))
    assert resumed.resumed_from >= 4
    name = "pytorch_lora_weights.safetensors"
    ref, got = load_file(reference.adapter_dir / name), load_file(resumed.adapter_dir / name)
    assert ref.keys() == got.keys()
    for key in ref:
        assert (ref[key] == got[key]).all(), key


@pytest.mark.parametrize("base", [FLUX, SD3])
def test_two_process_training(tmp_path: Path, base: str) -> None:
    from brandtune.training import launch

    lines: list[str] = []
    try:
        result = launch(
            quick(tmp_path, base_model=base, max_train_steps=2), num_processes=2, on_line=lines.append
        )
    except TrainingError as exc:  # the processes' output, to tell why
        raise AssertionError("\n".join([str(exc), *lines[-60:]])) from exc
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert (result.adapter_dir / "pytorch_lora_weights.safetensors").is_file()
    assert sum("brandtune.training: adapter:" in line for line in lines) == 2  # both ranks trained


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"base_model": FLUX, "resolution": 66},
            r"not divisible by 4 \(VAE factor x FLUX's 2x2 latent packing\)",
        ),
        ({"base_model": SD3, "resolution": 66}, r"not divisible by 4 \(VAE factor x SD3's patch size\)"),
        (
            {"base_model": FLUX, "max_sequence_length": 65},
            r"more than builtin:tiny-flux's T5 tokenizer takes \(64",
        ),
        ({"base_model": SD3, "train_text_encoder": True}, r"train_text_encoder is not supported for SD3"),
        ({"base_model": FLUX, "snr_gamma": 5.0}, r"flow matching: leave them empty"),
        ({"base_model": SD3, "export_kohya": True}, r"there is none for SD3"),
    ],
)
def test_up_front_errors(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train(quick(tmp_path, max_train_steps=1, **overrides))
    assert not (tmp_path / "run").exists(), "nothing was written before the error"


def test_real_flux_resolution_must_be_a_multiple_of_16(tmp_path: Path) -> None:
    from brandtune.training.families import family_ops

    for name, config in {"vae": {"block_out_channels": [128, 256, 512, 512]}, "transformer": {}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert family_ops("flux").resolution_multiple(tmp_path) == 16  # FLUX.1's 8x VAE, 2x2 packing
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"patch_size": 2}))
    assert family_ops("sd3").resolution_multiple(tmp_path) == 16  # SD3's 8x VAE, 2x2 patches


def test_an_adapter_of_another_family_is_refused(flow_trained: tuple[str, Any], tmp_path: Path) -> None:
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.models.loading import load_adapter

    base, result = flow_trained
    sdxl = load_base_pipeline(resolve_base("builtin:tiny-sdxl"))
    label = "FLUX.1" if base == FLUX else "SD3/SD3.5"
    with pytest.raises(
        ConfigError, match=rf"trained on a {label} base .* cannot load into a StableDiffusionXL"
    ):
        load_adapter(sdxl, result.adapter_dir)
    # without brandtune.json (a plain diffusers file), the key prefixes tell
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pytorch_lora_weights.safetensors").write_bytes(
        (result.adapter_dir / "pytorch_lora_weights.safetensors").read_bytes()
    )
    with pytest.raises(
        ConfigError, match=r"adapts a transformer, which a StableDiffusionXLPipeline does not"
    ):
        load_adapter(sdxl, plain)


def test_flow_defaults_come_from_the_family() -> None:
    from brandtune.models import resolve_base
    from brandtune.training.plan import resolve_job

    base = resolve_base(FLUX)
    assert base.family == "flux" and base.pipeline_class == "FluxPipeline"
    cfg = TrainConfig(brand="acme", base_model=FLUX).with_base_defaults(base.training_defaults)
    assert cfg.learning_rate == 1e-4 and cfg.train_batch_size == 1
    assert cfg.target_modules == ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                  "to_add_out"]  # fmt: skip
    from brandtune.settings import Settings

    job = resolve_job(TrainConfig(brand="acme", base_model=SD3, max_train_steps=1), Settings.from_env())
    assert job.resolved.family == "sd3" and job.config.weighting_scheme == "logit_normal"


def test_bf16_with_gradient_checkpointing(tmp_path: Path) -> None:
    """The GPU settings (bf16 weights, fp32 LoRA, recomputed activations) run the same loop; here on the CPU."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    AcceleratorState._reset_state(
        reset_partial_state=True
    )  # one state per process; this test changes precision
    try:
        cfg = quick(
            tmp_path, base_model=FLUX, max_train_steps=2, mixed_precision="bf16", gradient_checkpointing=True
        )
        result = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert np.isfinite(result.final_loss)
    weights = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")
    assert {str(v.dtype) for v in weights.values()} == {"torch.float32"}  # the trained LoRA stays in fp32
