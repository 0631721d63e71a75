"""Fixtures of the model tests: the built-in models built from their config, once per module.

``from_config`` is not autouse: tests/models/test_builtin_quality.py and test_training_defaults.py check the
shipped pretrained copy, so only the modules that name it (``pytestmark``) set that copy aside.
"""

from __future__ import annotations

from typing import Any

import pytest

from brandtune.models import ResolvedBase, resolve_base
from brandtune.models import builtin as builtin_module


@pytest.fixture(scope="module")
def from_config() -> Any:
    """These tests exercise the from-config build path, so the shipped pretrained copy is set aside here.

    tests/models/test_builtin_quality.py checks the shipped weights themselves.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtin_module, "shipped_dir", lambda spec: None)
        yield


@pytest.fixture(scope="module")
def tiny(from_config: None) -> ResolvedBase:
    """builtin:tiny built from config (random weights), once, into the session's BRANDTUNE_HOME."""
    return resolve_base("builtin:tiny")


@pytest.fixture(scope="module")
def tiny_sdxl(from_config: None) -> ResolvedBase:
    """builtin:tiny-sdxl, built once into the session's BRANDTUNE_HOME."""
    return resolve_base("builtin:tiny-sdxl")
