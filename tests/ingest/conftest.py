"""Fixtures of the ingest tests: the sample brand's spec and a private BRANDTUNE_HOME per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from brandtune.config import BrandSpec
from brandtune.settings import Settings


@pytest.fixture
def brand() -> BrandSpec:
    return BrandSpec(
        name="acme",
        trigger="acme",
        subject="bottle",
        palette=["#1fa6a0"],
        evaluation_prompts=["a photo of {trigger} {subject}"],
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", tracking_uri="sqlite:///unused.db")
