"""brandtune.training.checkpoint: a training killed mid-run resumes from its last complete checkpoint to the
identical adapter, skipping a half-written one, and continues its MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import kill_after_checkpoint, quick

from brandtune.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


def _write_config(path: Path, cfg: TrainConfig) -> Path:
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path


def _tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "pytorch_lora_weights.safetensors")


def test_kill_and_resume_gives_identical_adapter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    common = {
        "max_train_steps": 16,
        "checkpointing_steps": 4,
        "dropout": 0.1,
        "random_flip": True,
        "learning_rate": 5e-3,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
    }
    reference = train(quick(tmp_path / "ref", **common))
    interrupted = quick(tmp_path / "killed", **common)
    kill_after_checkpoint(interrupted, tmp_path / "cfg.json", step=8)
    ckpts = interrupted.output_dir / "checkpoints"
    # A half-written newer checkpoint (no valid marker) must be skipped.
    broken = ckpts / "checkpoint-00000099"
    broken.mkdir(exist_ok=True)
    (broken / "COMPLETE").write_text("{not json")
    # the killed process held the folder's lock (no launcher here): the resume takes the stale lock over
    import logging

    with caplog.at_level(logging.INFO, logger="brandtune.training"):
        resumed = train(interrupted.model_copy(update={"resume": "latest"}))
    assert any("stale lock" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert resumed.resumed_from >= 8
    ref, got = _tensors(reference.adapter_dir), _tensors(resumed.adapter_dir)
    assert ref.keys() == got.keys()
    for key in ref:
        assert (ref[key] == got[key]).all(), key
    import mlflow

    # The resumed process continued the killed process's MLflow run.
    run = mlflow.MlflowClient().get_run(resumed.mlflow_run_id)
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")][-1] == 16
