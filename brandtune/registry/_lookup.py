"""Finding versions by what they were trained on (their lineage tags)."""

from __future__ import annotations

from brandtune.registry._client import call, check_reachable, client
from brandtune.registry._versions import RegisteredVersion, model_name, versions
from brandtune.settings import Settings

CONFIG_HASH_TAG = "brandtune.config_hash"


def versions_with_config_hash(
    brand: str, config_hash: str, *, settings: Settings | None = None
) -> list[RegisteredVersion]:
    """The versions of ``<brand>-lora`` trained with identity ``config_hash``, newest first, with their aliases.

    Empty when there is none, or when the brand has no registered model yet.

    Raises:
        RegistryError: the tracking server stayed unreachable.
    """
    settings = settings or Settings.from_env()
    uri = settings.tracking_uri
    check_reachable(uri)
    mlc = client(settings)
    name = model_name(brand)
    if not all(c.isalnum() for c in config_hash):
        return []  # a hash is hex; anything else matches nothing (and never reaches the filter string)
    found = versions(mlc, name, uri, f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'")
    if not found:
        return []
    model = call(lambda: mlc.get_registered_model(name), uri=uri, what=f"read registered model {name}")
    by_version: dict[str, list[str]] = {}
    for alias, number in (getattr(model, "aliases", None) or {}).items():
        by_version.setdefault(str(number), []).append(alias)
    return [
        RegisteredVersion(**{**r.__dict__, "aliases": tuple(sorted(by_version.get(r.version, [])))})
        for r in found
    ]
