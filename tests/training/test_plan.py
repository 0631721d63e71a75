"""brandtune.training.plan: bad input, bad config values and too little disk fail before any compute."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from training_helpers import quick

from brandtune.errors import ConfigError, ModelResolutionError, TrainingError
from brandtune.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        ({"dataset": "ffffffff"}, Exception, "does not exist"),
        ({"base_model": "builtin:nope"}, ModelResolutionError, "Built-in models"),
        ({"resolution": 63}, TrainingError, "not divisible by"),
        ({"target_modules": ["to_qq"]}, TrainingError, "matches no layer"),
        ({"mixed_precision": "fp16"}, TrainingError, "needs a CUDA GPU"),
    ],
)
def test_bad_input_fails_before_compute(tmp_path: Path, overrides: dict, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        train(quick(tmp_path, max_train_steps=1, **overrides))
    assert not (tmp_path / "run" / "adapter").exists()


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TrainConfig(brand="acme", rank=0)
    with pytest.raises(ValidationError, match="lr_warmup_steps"):
        TrainConfig(brand="acme", max_train_steps=5, lr_warmup_steps=5)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainConfig(brand="acme", rnak=4)
    assert issubclass(ConfigError, ValueError)


def test_out_of_disk_is_checked_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import brandtune.training.plan as plan

    monkeypatch.setattr(plan.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(TrainingError, match="not enough disk"):
        train(quick(tmp_path, max_train_steps=1))
