"""brandtune.training.lora: text-encoder LoRA and LoRA on every layer kind, loaded whole by plain diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import quick

from brandtune.training import train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


def test_text_encoder_lora_trains_and_loads_in_plain_diffusers(tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from brandtune.models import resolve_base

    result = train(quick(tmp_path, train_text_encoder=True, max_train_steps=3, learning_rate=1e-2))
    keys = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_base("builtin:tiny").path)
    ids = pipe.tokenizer(["a photo of acme bottle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(result.adapter_dir)
        after = pipe.text_encoder(ids)[0]
    assert not torch.allclose(before, after), "the text-encoder LoRA changes what the text encoder says"


def test_lora_on_every_layer_kind_loads_whole_in_plain_diffusers(tmp_path: Path) -> None:
    """Attention, feed-forward, projections and resnet convolutions in one adapter: plain diffusers loads every one
    of them (a file mixing diffusers' attention-only key layout with peft's made it drop the attention layers)."""
    import warnings

    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    from brandtune.config.train import DEFAULT_UNET_TARGETS, NON_ATTENTION_UNET_TARGETS
    from brandtune.models import resolve_base

    targets = [*DEFAULT_UNET_TARGETS, *NON_ATTENTION_UNET_TARGETS]
    result = train(quick(tmp_path, target_modules=targets, max_train_steps=2))
    saved = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")
    layers = {k.removeprefix("unet.").rsplit(".lora", 1)[0] for k in saved}
    assert any(n.endswith("attn1.to_q") for n in layers) and any(
        n.endswith("resnets.0.conv1") for n in layers
    )
    assert any(n.endswith("ff.net.2") for n in layers) and any(n.endswith("proj_in") for n in layers)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_base("builtin:tiny").path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when it skips layers of the file
        pipe.load_lora_weights(result.adapter_dir)
    loaded = {name for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer)}
    assert loaded == layers
