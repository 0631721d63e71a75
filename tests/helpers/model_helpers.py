"""Plain helpers of the model tests (tests/models/): the prompt they sample and a seeded generator."""

from __future__ import annotations

from typing import Any

PROMPT = "a photo of acme bottle on a beach at sunset"


def _generator() -> Any:
    import torch

    return torch.Generator().manual_seed(0)
