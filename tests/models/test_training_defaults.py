"""A base's training recommendation (``brandtune_training.json``): shipped with builtin:tiny, carried by a copy,
generic for a base without one, and checked like any config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brandtune.errors import ModelResolutionError
from brandtune.models import export_base, resolve_base
from brandtune.models.resolve import (
    GENERIC_TRAINING_DEFAULTS,
    TRAINING_DEFAULTS_FILE,
    read_training_defaults,
)


def test_builtin_tiny_recommends_what_was_measured_on_it() -> None:
    from brandtune.config import NON_ATTENTION_UNET_TARGETS

    rec = resolve_base("builtin:tiny").training_defaults
    assert list(rec.target_modules) == NON_ATTENTION_UNET_TARGETS
    assert (rec.learning_rate, rec.lr_scheduler, rec.lr_warmup_steps) == (8e-3, "cosine", 20)
    assert (rec.max_train_steps, rec.train_batch_size) == (300, 8)
    assert rec.source.endswith(TRAINING_DEFAULTS_FILE)
    assert resolve_base("builtin:tiny-sdxl").training_defaults == GENERIC_TRAINING_DEFAULTS


def test_the_recommendation_travels_with_an_exported_copy(tmp_path: Path) -> None:
    copy = resolve_base(str(export_base("builtin:tiny", tmp_path / "tiny")))
    mine = copy.training_defaults.model_dump(exclude={"source"})
    assert mine == resolve_base("builtin:tiny").training_defaults.model_dump(exclude={"source"})


def test_a_partial_file_keeps_the_generic_rest_and_a_bad_one_is_named(tmp_path: Path) -> None:
    (tmp_path / TRAINING_DEFAULTS_FILE).write_text(json.dumps({"_comment": "notes", "learning_rate": 1e-4}))
    rec = read_training_defaults(tmp_path)
    assert rec.learning_rate == 1e-4 and rec.target_modules == GENERIC_TRAINING_DEFAULTS.target_modules
    (tmp_path / TRAINING_DEFAULTS_FILE).write_text(json.dumps({"learning_rat": 1e-4}))
    with pytest.raises(ModelResolutionError, match=rf"{TRAINING_DEFAULTS_FILE}.*learning_rat"):
        read_training_defaults(tmp_path)
    (tmp_path / TRAINING_DEFAULTS_FILE).write_text(
        json.dumps({"lr_warmup_steps": 300, "max_train_steps": 300})
    )
    with pytest.raises(ModelResolutionError, match="must be below max_train_steps"):
        read_training_defaults(tmp_path)
    assert read_training_defaults(tmp_path / "none") == GENERIC_TRAINING_DEFAULTS


def test_identity_follows_what_is_trained_not_when_state_is_saved() -> None:
    """A retrain that only saves checkpoints on another schedule would train the same weights: same identity."""
    from brandtune.config import TrainingDefaults
    from brandtune.training import TrainConfig

    defaults = TrainingDefaults()

    def identity(**fields: object) -> dict:
        return TrainConfig(brand="acme", **fields).with_base_defaults(defaults).identity()

    assert identity(checkpointing_steps=100, checkpoints_total_limit=5) == identity(checkpointing_steps=50)
    assert identity(num_threads=1, log_every=3) == identity()
    assert identity(learning_rate=2e-3) != identity()
    assert identity(seed=1) != identity()
