"""Registered model names, versions and the readable errors for the ones that do not exist."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from brandtune.errors import ConfigError, RegistryError
from brandtune.registry._client import call, find

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

SUFFIX = "-lora"
TAG = "brandtune."
SOURCE_RUN_TAG = "brandtune.source_run_id"
ADAPTER_SHA_TAG = "brandtune.adapter_sha256"
METRIC_TAG = "brandtune.metric."
#: Set last by registration, once the version is READY with its whole lineage tag set: only then may an alias
#: point at it.
COMPLETE_TAG = "brandtune.registration"
COMPLETE = "complete"
#: The tags every registered version carries (set in the ``create_model_version`` call itself).
REQUIRED_TAGS = (
    SOURCE_RUN_TAG,
    ADAPTER_SHA_TAG,
    "brandtune.dataset_fingerprint",
    "brandtune.base_model",
    "brandtune.base_revision",
    "brandtune.config_hash",
    "brandtune.git_sha",
)
READY = "READY"
CANDIDATE, CHAMPION, PREVIOUS = "candidate", "champion", "previous-champion"

_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a brand's registered adapter model.

    Attributes:
        name: Registered model name, ``<brand>-lora``.
        version: Version number (MLflow's string form, e.g. ``"3"``).
        run_id: The training run the adapter came from (the model is logged into that run).
        aliases: Aliases pointing at this version (``candidate``, ``champion``, ...).
        tags: All version tags (lineage, metrics).
        created: Creation time (UTC).
        source: The MLflow source URI of the version's artifacts (``models:/<logged model id>``).
        description: What the adapter was trained on.
        status: MLflow's registration status (``READY``, ``PENDING_REGISTRATION``, ``FAILED_REGISTRATION``).
    """

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    source: str = ""
    description: str = ""
    status: str = READY

    @property
    def complete(self) -> bool:
        """READY and tagged ``brandtune.registration=complete``: the only state an alias may point at."""
        return self.status == READY and self.tags.get(COMPLETE_TAG) == COMPLETE

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"

    @property
    def base_model(self) -> str:
        return self.tags.get("brandtune.base_model", "")

    @property
    def base_revision(self) -> str:
        return self.tags.get("brandtune.base_revision", "")

    @property
    def metrics(self) -> dict[str, float]:
        """Evaluation metrics recorded as ``brandtune.metric.<name>`` tags."""
        out = {}
        for key, value in self.tags.items():
            if key.startswith(METRIC_TAG):
                try:
                    out[key.removeprefix(METRIC_TAG)] = float(value)
                except ValueError:
                    continue
        return out

    @classmethod
    def from_mlflow(cls, mv: ModelVersion) -> RegisteredVersion:
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
        return cls(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or "",
            aliases=tuple(sorted(getattr(mv, "aliases", None) or ())),
            tags=dict(mv.tags or {}),
            created=created,
            source=mv.source or "",
            description=mv.description or "",
            status=str(getattr(mv, "status", None) or READY),
        )


def model_name(brand: str) -> str:
    """The registered model of a brand: ``<brand>-lora`` (a name that already ends in ``-lora`` is kept)."""
    brand = brand.strip()
    if not brand or "/" in brand or "@" in brand:
        raise ConfigError(f"Brand {brand!r} is not a brand slug: give the brand's name, e.g. 'acme'.")
    return brand if brand.endswith(SUFFIX) else f"{brand}{SUFFIX}"


def model_uri(brand: str, ref: str | int) -> str:
    """The ``models:/`` URI of a brand's adapter: ``models:/<brand>-lora/<n>`` for a version number, else
    ``models:/<brand>-lora@<alias>`` (``ref`` may carry a leading ``@``: ``"@champion"`` is ``champion``).

    Raises:
        ConfigError: ``brand`` is not a brand slug or ``ref`` is empty.
    """
    name = model_name(brand)
    text = str(ref).strip().lstrip("@")
    if not text:
        raise ConfigError(
            f"No alias or version given for {name}: use an alias such as 'champion' or a number."
        )
    return f"models:/{name}/{text}" if text.isdigit() else f"models:/{name}@{text}"


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` into (name, alias, version)."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise ConfigError(
            f"Model URI {uri!r} is not understood: use models:/<name>@<alias> (e.g. models:/acme-lora@champion) "
            "or models:/<name>/<version> (e.g. models:/acme-lora/3)."
        )
    return match["name"], match["alias"], match["version"]


def registered_models(mlc: MlflowClient, uri: str) -> list[str]:
    """Names of the registered ``*-lora`` models."""
    models = call(
        lambda: mlc.search_registered_models(max_results=1000), uri=uri, what="list registered models"
    )
    return sorted(m.name for m in models if m.name.endswith(SUFFIX))


def get_model(mlc: MlflowClient, name: str, uri: str) -> Any:
    """The registered model ``name``, or an error listing the ``*-lora`` models that exist."""
    model = find(lambda: mlc.get_registered_model(name), uri=uri, what=f"read registered model {name}")
    if model is None:
        known = registered_models(mlc, uri)
        raise RegistryError(
            f"No registered model {name!r} in the registry at {uri}. Registered adapter models: "
            f"{', '.join(known) or 'none'}. Register a training run first: "
            f"`brandtune register --brand {name.removesuffix(SUFFIX)} --run RUN_ID`."
        )
    return model


def require_complete(version: RegisteredVersion) -> RegisteredVersion:
    """``version`` itself when its registration finished (READY with ``brandtune.registration=complete``).

    Fetch, promote, rollback, evaluate and every alias move call this before they use a version.

    Raises:
        RegistryError: the version is half-registered (one line: which version, what is missing, what to run).
    """
    if version.complete:
        return version
    missing = [] if version.status == READY else [f"status {version.status}"]
    if version.tags.get(COMPLETE_TAG) != COMPLETE:
        missing.append(f"no {COMPLETE_TAG}={COMPLETE} tag")
    brand = version.name.removesuffix(SUFFIX)
    run = version.tags.get(SOURCE_RUN_TAG) or version.run_id or "RUN_ID"
    raise RegistryError(
        f"{version.name} version {version.version} is a half-finished registration ({', '.join(missing)}): "
        f"run `brandtune register --brand {brand} --run {run}` again or `brandtune doctor --fix`."
    )


def canonical(rows: list[RegisteredVersion], aliased: set[str]) -> RegisteredVersion | None:
    """The one version to keep among versions of the same training run (older code could make duplicates).

    The order: a version an alias points at, then a complete one, then a READY one, then a pending one; among
    equals the oldest (lowest number), so every process (and ``brandtune doctor``) picks the same one. FAILED
    versions are never picked.
    """
    usable = [r for r in rows if r.status != "FAILED_REGISTRATION"]
    if not usable:
        return None
    return max(usable, key=lambda r: (r.version in aliased, r.complete, r.status == READY, -int(r.version)))


def resolve(
    mlc: MlflowClient,
    name: str,
    alias: str | None,
    version: str | None,
    uri: str,
    *,
    complete: bool = True,
) -> RegisteredVersion:
    """Resolve an alias or a version number of ``name`` to one version (one registry call when it exists).

    With ``complete`` (the default) a half-finished registration is refused (:func:`require_complete`).
    """
    if alias is not None:
        mv = find(
            lambda: mlc.get_model_version_by_alias(name, alias), uri=uri, what=f"resolve {name}@{alias}"
        )
    else:
        mv = find(lambda: mlc.get_model_version(name, str(version)), uri=uri, what=f"read {name}/{version}")
    if mv is not None:
        found = RegisteredVersion.from_mlflow(mv)
        return require_complete(found) if complete else found
    model = get_model(mlc, name, uri)  # raises with the list of models when the model is unknown
    aliases = dict(getattr(model, "aliases", None) or {})
    existing = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
    what = f"alias @{alias}" if alias is not None else f"version {version}"
    raise RegistryError(
        f"Registered model {name!r} has no {what}. Aliases that exist: {existing}. "
        f"List versions with `brandtune models list {name.removesuffix(SUFFIX)}`."
    )


def versions(mlc: MlflowClient, name: str, uri: str, filter_extra: str = "") -> list[RegisteredVersion]:
    """All versions of ``name`` (newest first), optionally narrowed by an extra filter clause."""
    query = f"name = '{name}'" + (f" and {filter_extra}" if filter_extra else "")
    found = call(lambda: mlc.search_model_versions(query, max_results=10000), uri=uri, what=f"list {name}")
    rows = [RegisteredVersion.from_mlflow(mv) for mv in found]
    return sorted(rows, key=lambda r: int(r.version), reverse=True)
