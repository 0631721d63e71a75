"""Ingest: a brand's photos (folder, .zip or file list) into an immutable, versioned dataset."""

from brandtune.ingest.dataset import IngestResult, compute_fingerprint, find_dataset, ingest

__all__ = ["IngestResult", "compute_fingerprint", "find_dataset", "ingest"]
