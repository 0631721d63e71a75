"""The MLflow model registry: register adapters, move aliases, and pull adapters downstream.

One registered model per brand, ``<brand>-lora``, logged with MLflow's ``mlflow.diffusers`` flavor into the
training run. Aliases are the release mechanism: ``@candidate`` (newest registered), ``@champion`` (what generators
use) and ``@previous-champion`` (rollback).

Example:
    >>> from brandtune.registry import register, promote, load_pipeline
    >>> v = register("acme", run_id)
    >>> promote("acme", v.version, expected_champion=None)  # refused if a champion appeared meanwhile
    >>> pipe = load_pipeline("models:/acme-lora@champion")

Importing this package is cheap: mlflow, torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

from brandtune.provenance import WEIGHTS_NAME
from brandtune.registry._aliases import (
    ANY_CHAMPION,
    AliasMove,
    ChampionMovedError,
    list_versions,
    promote,
    rollback,
    set_version_tags,
    tag_lineage,
)
from brandtune.registry._client import START_SERVER_HINT, is_transient
from brandtune.registry._loading import (
    FetchedAdapter,
    adapter_cache_dir,
    adapter_name,
    fetch,
    load_pipeline,
    pull,
    resolve_adapter_base,
)
from brandtune.registry._lookup import versions_with_config_hash
from brandtune.registry._register import register
from brandtune.registry._versions import (
    CANDIDATE,
    CHAMPION,
    COMPLETE_TAG,
    PREVIOUS,
    RegisteredVersion,
    model_name,
    model_uri,
    parse_uri,
    require_complete,
)

__all__ = [
    "ANY_CHAMPION",
    "CANDIDATE",
    "CHAMPION",
    "COMPLETE_TAG",
    "PREVIOUS",
    "START_SERVER_HINT",
    "WEIGHTS_NAME",
    "AliasMove",
    "ChampionMovedError",
    "FetchedAdapter",
    "RegisteredVersion",
    "adapter_cache_dir",
    "adapter_name",
    "fetch",
    "is_transient",
    "list_versions",
    "load_pipeline",
    "model_name",
    "model_uri",
    "parse_uri",
    "promote",
    "pull",
    "register",
    "require_complete",
    "resolve_adapter_base",
    "rollback",
    "set_version_tags",
    "tag_lineage",
    "versions_with_config_hash",
]
