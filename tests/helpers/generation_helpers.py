"""Shared by the tests that sample from trained versions (generation, the evaluation job)."""

from __future__ import annotations

from brandtune.config import SamplerConfig

FAST = SamplerConfig(num_inference_steps=3)
