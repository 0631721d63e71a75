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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers
    import transformers

    counts: dict[str, int] = {}
    for cls in (diffusers.AutoencoderKL, transformers.CLIPTextModel, diffusers.UNet2DConditionModel):
        _count_calls(monkeypatch, cls, counts)
    cfg = quick(tmp_path, max_train_steps=2, validation_steps=1, validation_prompts=["a photo of acme bottle"])
    result = train(cfg)
    assert counts == {"AutoencoderKL": 1, "CLIPTextModel": 1, "UNet2DConditionModel": 1}, counts
    images = sorted(p.name for p in (result.run_dir / "validation").iterdir())
    assert images == ["step-000001.png", "step-000002.png"], "validation during and after training"
