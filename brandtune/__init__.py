"""brandtune: brand product photos -> versioned LoRA adapters -> campaign imagery.

``brandtune.load_pipeline("models:/acme-lora@champion")`` is the downstream entry point; it is imported on first
use, so ``import brandtune`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pipeline"]


def __getattr__(name: str) -> Any:
    if name == "load_pipeline":
        from brandtune.registry import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'brandtune' has no attribute {name!r}")
