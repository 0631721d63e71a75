"""Ingest: a brand's photos (folder, .zip or file list) into an immutable, versioned dataset.

The names below are imported on first use, so a worker process that unpickles
:func:`brandtune.ingest.images.process_photo` loads only what that function needs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IngestResult", "compute_fingerprint", "find_dataset", "ingest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from brandtune.ingest import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'brandtune.ingest' has no attribute {name!r}")
