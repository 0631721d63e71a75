"""Base models: resolve a reference, detect its family, load it, export it.

Importing this package is cheap: torch, diffusers and transformers are imported inside the functions that need
them, and nothing touches the disk until a function is called.

Example:
    >>> from brandtune.models import resolve_base, load_base_pipeline
    >>> base = resolve_base("builtin:tiny")  # or "/path/to/diffusers-folder" or "org/name@rev"
    >>> pipe = load_base_pipeline(base)
"""

from __future__ import annotations

from brandtune.models.builtin import BUILTIN_MODELS
from brandtune.models.export import export_base
from brandtune.models.family import FAMILIES, Family, detect_family
from brandtune.models.loading import BaseComponents, load_base_pipeline, load_components
from brandtune.models.resolve import ResolvedBase, resolve_base

__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "BaseComponents",
    "Family",
    "ResolvedBase",
    "detect_family",
    "export_base",
    "load_base_pipeline",
    "load_components",
    "resolve_base",
]
