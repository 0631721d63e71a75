"""Plain helpers of the training tests (tests/training/): a quick training config of the sample brand."""

from __future__ import annotations

from pathlib import Path

from brandtune.training import TrainConfig

QUICK = {
    "brand": "acme",
    "checkpointing_steps": 0,
    "validation_inference_steps": 2,
    "num_threads": 2,
    "train_batch_size": 4,
}


def quick(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(**{**QUICK, "output_dir": tmp_path / "run", **overrides})
