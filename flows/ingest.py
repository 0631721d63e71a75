"""The ``ingest`` flow: a brand's photos become a versioned, content-addressed dataset."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from brandtune.config import IngestConfig, field_type
from flows._artifacts import publish
from flows._params import TIMEOUTS, BrandSlug
from flows._tasks import ingest_task, photo_sources

# IngestConfig's bounds (the form's descriptions are the docstring's).
Resolution = field_type(IngestConfig, "resolution", optional=True)
MinImages = field_type(IngestConfig, "min_images")


@flow(name="ingest", log_prints=False, validate_parameters=True, timeout_seconds=TIMEOUTS.flow("ingest"))
def ingest_flow(
    brand: BrandSlug = "acme",
    sources: Annotated[
        list[str] | None,
        Field(
            description="Folders, .zip archives or image files to read (paths on the worker). Empty: the brand's "
            "data/brands/{brand}/photos folder."
        ),
    ] = None,
    resolution: Resolution = None,
    min_images: MinImages = 4,
) -> dict[str, Any]:
    """Turn a brand's product photos into a training dataset.

    Every photo is checked (format, size, blur, duplicates), normalised to a square image and captioned with the
    brand's trigger word. The dataset is content-addressed: ingesting the same photos again reuses it. Rejected
    files, with the reason for each, are listed in the dataset's report.json (linked in the run's summary).

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml and photos/ (e.g. acme).
        sources: Folders, .zip archives or image files to read (paths on the worker). Empty: the brand's
            data/brands/{brand}/photos folder.
        resolution: Output size in px (square). Empty: brand.yaml's resolution.
        min_images: Fail when fewer photos than this are accepted.
    """
    dataset, seconds = ingest_task(brand, sources, resolution, min_images)
    read = [str(p) for p in photo_sources(brand, sources)]
    publish(
        "ingest",
        brand,
        f"Dataset {brand}/{dataset.fingerprint}",
        [
            ("dataset", f"`{dataset.fingerprint}`" + (" (reused)" if dataset.reused else " (new)")),
            ("images", f"{dataset.num_images} accepted, {dataset.num_rejected} rejected"),
            ("folder", f"`{dataset.path}`"),
            ("masks", ", ".join(f"{n} {k}" for k, n in dataset.mask_counts().items() if n) or "none"),
            ("mask contact sheet", f"`{dataset.contact_sheet}`"),
            ("rejections report", f"`{dataset.report_path}`"),
            ("sources", ", ".join(f"`{s}`" for s in read)),
        ],
        [
            {"metric": "images_accepted", "value": dataset.num_images},
            {"metric": "images_rejected", "value": dataset.num_rejected},
        ],
    )
    return {
        "fingerprint": dataset.fingerprint,
        "path": str(dataset.path),
        "num_images": dataset.num_images,
        "num_rejected": dataset.num_rejected,
        "reused": dataset.reused,
        "report": str(dataset.report_path),
        "sources": read,
        "seconds": seconds,
    }
