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


def _write(root: Path, step: int) -> Path:
    """A real checkpoint of tiny tensors, as the loop writes it."""
    import torch

    from brandtune.training import checkpoint as ckpt

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight])
    weight.grad = torch.ones(4)
    optimizer.step()
    return ckpt.write_checkpoint(
        root,
        step,
        {"0/w": weight.detach()},
        optimizer.state_dict(),
        {"last_epoch": step},
        {},
        {0: ckpt.rng_state()},
        10,
    )


def test_bad_checkpoints_are_skipped_with_their_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bit flip under a valid marker, an empty or non-object marker, a marker of another step and a folder that
    is not a checkpoint name are skipped (never raised on, never loaded); resume takes the newest good one and the
    log names each skipped one."""
    from brandtune.training import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    good = _write(root, 1)
    flipped, empty, not_object, other_step = (_write(root, s) for s in (2, 3, 4, 5))
    data = bytearray((flipped / "trainable.safetensors").read_bytes())
    data[-1] ^= 0x01
    (flipped / "trainable.safetensors").write_bytes(bytes(data))
    (empty / ckpt.MARKER).write_text(json.dumps({"step": 3, "files": {}}))
    (not_object / ckpt.MARKER).write_text(json.dumps(["step", 4]))
    marker = json.loads((other_step / ckpt.MARKER).read_text())
    (other_step / ckpt.MARKER).write_text(json.dumps({**marker, "step": 9}))
    (root / "checkpoint-foo").mkdir()
    (root / "checkpoint-foo" / ckpt.MARKER).write_text("{}")
    assert [p.name for p in ckpt.list_checkpoints(root)] == [f"checkpoint-{s:08d}" for s in range(1, 6)]
    with caplog.at_level("WARNING"):
        assert ckpt.latest_valid(root) == good
    reasons = {p.name: ckpt.verify(p) for p in (flipped, empty, not_object, other_step)}
    assert "does not match its recorded sha256" in reasons[flipped.name]
    assert "does not cover" in reasons[empty.name]
    assert "no file list" in reasons[not_object.name]
    assert "names step 9" in reasons[other_step.name]
    assert all(p.name in caplog.text for p in (flipped, empty, not_object, other_step))


def test_rewriting_a_checkpoint_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path: Path) -> None:
    from brandtune.training import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    first = _write(root, 7)
    again = _write(root, 7)
    assert again == first and ckpt.verify(again) is None
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000007"]  # nothing left aside
