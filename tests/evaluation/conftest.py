"""Fixtures of the evaluation tests: tiny random CLIP and DINOv2 folders, saved once per module."""

from __future__ import annotations

from pathlib import Path

import pytest
from metric_model_helpers import save_tiny_clip, save_tiny_dino


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    return save_tiny_dino(tmp_path_factory.mktemp("dino"))
