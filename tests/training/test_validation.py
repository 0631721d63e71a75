"""Validation images from the models already in memory: training loads the base's VAE and text encoders once, and
the validation pipeline reuses them instead of loading the base a second time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from training_helpers import quick

from brandtune.training import train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


def _count_calls(monkeypatch: pytest.MonkeyPatch, cls: Any, counts: dict[str, int]) -> None:
    """Count ``cls.from_pretrained`` calls (the real method runs: a spy, not a mock)."""
    real = cls.from_pretrained.__func__

    def spy(klass: Any, *a: Any, **kw: Any) -> Any:
        counts[klass.__name__] = counts.get(klass.__name__, 0) + 1
        return real(klass, *a, **kw)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))


def test_the_base_is_loaded_once_and_validation_reuses_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import diffusers
    import transformers

    counts: dict[str, int] = {}
    for cls in (diffusers.AutoencoderKL, transformers.CLIPTextModel, diffusers.UNet2DConditionModel):
        _count_calls(monkeypatch, cls, counts)
    cfg = quick(
        tmp_path, max_train_steps=2, validation_steps=1, validation_prompts=["a photo of acme bottle"]
    )
    result = train(cfg)
    assert counts == {"AutoencoderKL": 1, "CLIPTextModel": 1, "UNet2DConditionModel": 1}, counts
    images = sorted(p.name for p in (result.run_dir / "validation").iterdir())
    assert images == ["step-000001.png", "step-000002.png"], "validation during and after training"
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err, "no loading bars"


def test_batched_validation_draws_what_one_call_per_image_draws() -> None:
    """The prompts go through the sampler together, each image from its own generator: every image is the one a
    call of its own with its seed (``1000 i + j``) draws, in the order prompt, aspect, image."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.training import validation
    from brandtune.training.families import family_ops

    resolved = resolve_base("builtin:tiny")
    pipe = load_base_pipeline(resolved)
    plan = SimpleNamespace(
        config=SimpleNamespace(max_sequence_length=None),
        ops=family_ops(resolved.family),
        resolved=resolved,
        resolution=64,
        brand=SimpleNamespace(aspects=["1:1", "3:4"]),
    )
    prompts = ["a photo of a red bottle on a beach", "a photo of a blue can in the snow", "a green box"]
    sizes = validation.validation_sizes(plan)
    images = validation.sample(plan, pipe, prompts, per_prompt=2, steps=2)
    assert len(images) == len(prompts) * len(sizes) * 2
    k = 0
    for i, prompt in enumerate(prompts):
        for width, height in sizes:
            for j in range(2):
                alone = pipe(
                    prompt,
                    num_inference_steps=2,
                    generator=torch.Generator().manual_seed(1000 * i + j),
                    height=height,
                    width=width,
                ).images[0]
                assert images[k].size == (width, height)
                diff = np.abs(np.asarray(images[k], dtype=int) - np.asarray(alone, dtype=int))
                assert diff.max() <= 2, f"prompt {i}, {width}x{height}, image {j}: differs by {diff.max()}"
                k += 1
