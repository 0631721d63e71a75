"""brandtune.models.loading: a base pipeline loads and generates."""

from __future__ import annotations

import pytest
from model_helpers import PROMPT, _generator

from brandtune.models import ResolvedBase, load_base_pipeline

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


def test_load_base_pipeline_generates(tiny: ResolvedBase) -> None:
    pipe = load_base_pipeline(tiny)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)
