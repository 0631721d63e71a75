"""The ``ingest`` flow: a brand's photos become a versioned, content-addressed dataset."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows._artifacts import publish
from flows._params import BrandSlug
from flows._tasks import ingest_task


@flow(name="ingest", log_prints=False, validate_parameters=True)
def ingest_flow(
    brand: BrandSlug = "acme",
    sources: Annotated[
        list[str] | None,
        Field(
            description="Folders, .zip archives or image files to read (paths on the worker). Empty: the brand's "
            "data/brands/{brand}/photos folder."
        ),
    ] = None,
    resolution: Annotated[
        int | None, Field(ge=32, le=4096, description="Output size in px. Empty: brand.yaml's resolution.")
    ] = None,
    min_images: Annotated[
        int | None, Field(ge=1, description="Fail when fewer photos are accepted. Empty: the default.")
    ] = None,
) -> dict[str, Any]:
    """Turn a brand's product photos into a training dataset.

    Every photo is checked (format, size, blur, duplicates), normalised to a square image and captioned with the
    brand's trigger word. The dataset is content-addressed: ingesting the same photos again reuses it. Rejected
    files, with the reason for each, are listed in the dataset's report.json (linked in the run's summary).

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml and photos/ (e.g. acme).
        sources: Folders, .zip archives or image files to read (paths on the worker). Empty: the brand's
            data/brands/{brand}/photos folder.
        resolution: Output size in px. Empty: brand.yaml's resolution.
        min_images: Fail when fewer photos are accepted. Empty: the default (10).
    """
    result = ingest_task(brand, sources, resolution, min_images)
    publish(
        "ingest",
        brand,
        f"Dataset {brand}/{result['fingerprint']}",
        [
            ("dataset", f"`{result['fingerprint']}`" + (" (reused)" if result["reused"] else " (new)")),
            ("images", f"{result['num_images']} accepted, {result['num_rejected']} rejected"),
            ("folder", f"`{result['path']}`"),
            ("rejections report", f"`{result['report']}`"),
            ("sources", ", ".join(f"`{s}`" for s in result["sources"])),
        ],
        [
            {"metric": "images_accepted", "value": result["num_images"]},
            {"metric": "images_rejected", "value": result["num_rejected"]},
        ],
    )
    return result
