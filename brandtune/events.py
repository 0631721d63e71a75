"""Prefect events that brandtune emits, so that deployment triggers (prefect.yaml) can react to them.

| event | when | resource labels | payload |
| --- | --- | --- | --- |
| ``brandtune.champion.changed`` | @champion moved (promote, rollback, approval) | ``brandtune.brand`` | ``old_version``, ``new_version``, ``reason`` |
| ``brandtune.dataset.created`` | an ingest made a dataset with a new fingerprint | ``brandtune.brand``, ``brandtune.retrain_on_new_photos`` | ``fingerprint``, ``images``, ``path`` |

The resource of every event is the brand: ``prefect.resource.id`` is ``brandtune.brand.<slug>``, so a trigger
matches one brand with ``"prefect.resource.id": "brandtune.brand.acme"`` or all with ``brandtune.brand.*``.

An event is sent only to a Prefect server the user configured (``PREFECT_API_URL``, as the worker and
``brandtune ui`` set it); without one, brandtune never starts a temporary server just to emit. Sending is
asynchronous and best effort: Prefect's events worker delivers the event in the background and at process exit,
and a server that cannot be reached is logged, never an error of the promotion or ingest that emitted it. The
scheduled deployments are the backstop for an event that was lost.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

CHAMPION_CHANGED = "brandtune.champion.changed"
DATASET_CREATED = "brandtune.dataset.created"


def brand_resource(brand: str, **labels: str) -> dict[str, str]:
    """The resource of a brand's events: ``brandtune.brand.<slug>`` with its labels."""
    return {
        "prefect.resource.id": f"brandtune.brand.{brand}",
        "prefect.resource.name": brand,
        "brandtune.brand": brand,
        **labels,
    }


def emit(event: str, brand: str, payload: dict[str, Any], **labels: str) -> bool:
    """Emit ``event`` about ``brand`` to the configured Prefect server; return whether it was handed over.

    Nothing is sent (and False returned) when no Prefect API URL is configured.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        logger.debug("%s for %s not sent: no Prefect API configured (PREFECT_API_URL)", event, brand)
        return False
    from prefect.events import emit_event

    sent = emit_event(event=event, resource=brand_resource(brand, **labels), payload=payload)
    if sent is None:
        logger.warning("%s for %s could not be handed to Prefect's events worker", event, brand)
        return False
    logger.info("emitted %s for %s: %s", event, brand, payload)
    return True


def champion_changed(brand: str, old_version: str | None, new_version: str, reason: str) -> bool:
    """Emit :data:`CHAMPION_CHANGED`: @champion of ``brand`` moved from ``old_version`` to ``new_version``."""
    payload = {"old_version": old_version or "", "new_version": new_version, "reason": reason}
    return emit(CHAMPION_CHANGED, brand, payload)


def dataset_created(brand: str, fingerprint: str, images: int, path: str, *, retrain: bool) -> bool:
    """Emit :data:`DATASET_CREATED` for a dataset with a new fingerprint; ``retrain`` is the brand's opt-in
    (``automation.retrain_on_new_photos``), a label the retrain trigger matches on."""
    payload = {"fingerprint": fingerprint, "images": images, "path": path}
    return emit(DATASET_CREATED, brand, payload, **{"brandtune.retrain_on_new_photos": str(retrain).lower()})
