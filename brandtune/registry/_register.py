"""``register()``: log a training run's adapter as an ``mlflow.diffusers`` model and make it a version.

The order is what keeps a failure half-way harmless:

1. read the run and its ``adapter/`` artifacts, check every file against ``brandtune.json``;
2. log the adapter with the ``mlflow.diffusers`` flavor into the *same* run (a LoggedModel), list its artifacts
   back and mark it READY; a LoggedModel that fails here is marked FAILED (best effort);
3. only then create the model version (lineage tags and description in the same call), wait for READY;
4. move ``@candidate`` to it and tag it ``brandtune.registration=complete``.

A version therefore never exists without its artifacts. Registering a run again finds its version by the tag
``brandtune.source_run_id`` and finishes steps 4 if an earlier attempt stopped before them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import RegistryError
from brandtune.fsutil import sha256_file
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME
from brandtune.provenance import flow_run_id as current_flow_run_id
from brandtune.registry._client import call, check_reachable, client, find
from brandtune.registry._versions import (
    ADAPTER_SHA_TAG,
    CANDIDATE,
    SOURCE_RUN_TAG,
    RegisteredVersion,
    model_name,
    versions,
)
from brandtune.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

MODEL_NAME = "lora"  # the LoggedModel's name inside the run
COMPLETE_TAG = "brandtune.registration"
_LINEAGE = ("dataset_fingerprint", "base_model", "base_revision", "config_hash", "git_sha")


def register(
    brand: str, run_id: str, *, settings: Settings | None = None, flow_run_id: str | None = None
) -> RegisteredVersion:
    """Register the adapter of training run ``run_id`` as a new version of ``<brand>-lora`` with ``@candidate``.

    Args:
        brand: Brand slug (the model is ``<brand>-lora``).
        run_id: The MLflow run that trained the adapter (its ``adapter/`` artifacts are used).
        settings: Tracking URI and home; read from the environment when omitted.
        flow_run_id: Prefect flow run to record; default: env ``PREFECT__FLOW_RUN_ID``.

    Returns:
        The version (the existing one when this run was registered before).

    Raises:
        RegistryError: unknown run, a run of another brand, adapter files that do not match their hashes, or a
            tracking server that stayed unreachable (the message names the URI and how to start one).
    """
    settings = settings or Settings.from_env()
    uri = settings.tracking_uri
    check_reachable(uri)
    mlc = client(settings)
    name = model_name(brand)
    run = _get_run(mlc, run_id, uri)
    run_brand = run.data.tags.get("brandtune.brand")
    if run_brand and model_name(run_brand) != name:
        raise RegistryError(
            f"Run {run_id} trained brand {run_brand!r}, not {brand!r}: register it with --brand {run_brand}."
        )
    existing = versions(mlc, name, uri, f"tags.`{SOURCE_RUN_TAG}` = '{run_id}'")
    if existing:
        logger.info("run %s is already %s version %s", run_id, name, existing[-1].version)
        return _finish(mlc, existing[-1], uri)
    flow_run_id = flow_run_id or current_flow_run_id() or run.data.tags.get("prefect.flow_run_id")
    with tempfile.TemporaryDirectory(prefix="brandtune-register-") as tmp:
        adapter = download_adapter(mlc, run_id, Path(tmp), uri)
        info = json.loads((adapter / PROVENANCE_NAME).read_text(encoding="utf-8"))
        model_id = log_adapter(mlc, run_id, adapter, info, uri)
        tags = lineage_tags(info, run_id, adapter, flow_run_id, settings)
        description = describe(info, tags, run_id)
        _ensure_registered_model(mlc, name, brand, uri)
        mv = call(
            lambda: mlc.create_model_version(
                name,
                f"models:/{model_id}",
                run_id=run_id,
                tags=tags,
                description=description,
                model_id=model_id,
            ),
            uri=uri,
            what=f"create a version of {name}",
        )
    version = RegisteredVersion.from_mlflow(mv)
    if mv.status != "READY":
        raise RegistryError(f"{name} version {mv.version} ended in status {mv.status}: {mv.status_message}")
    logger.info("registered run %s as %s version %s", run_id, name, version.version)
    return _finish(mlc, version, uri)


def _get_run(mlc: MlflowClient, run_id: str, uri: str) -> Any:
    run = find(lambda: mlc.get_run(run_id), uri=uri, what=f"read run {run_id}")
    if run is None:
        raise RegistryError(
            f"No MLflow run {run_id!r} in the tracking store at {uri}: give the run id printed by "
            "`brandtune train` (or shown in the MLflow UI under experiment brandtune/<brand>)."
        )
    return run


def _finish(mlc: MlflowClient, version: RegisteredVersion, uri: str) -> RegisteredVersion:
    """Give a new (or half-registered) version ``@candidate`` and mark the registration complete."""
    if version.tags.get(COMPLETE_TAG) == "complete":
        return version
    name, number = version.name, version.version
    call(
        lambda: mlc.set_registered_model_alias(name, CANDIDATE, number),
        uri=uri,
        what=f"set {name}@{CANDIDATE}",
    )
    call(
        lambda: mlc.set_model_version_tag(name, number, COMPLETE_TAG, "complete"), uri=uri, what="tag version"
    )
    mv = call(lambda: mlc.get_model_version(name, number), uri=uri, what=f"read {name}/{number}")
    return RegisteredVersion.from_mlflow(mv)


def download_adapter(mlc: MlflowClient, run_id: str, dest: Path, uri: str) -> Path:
    """Download a run's ``adapter/`` artifacts and check each file against the hashes in ``brandtune.json``."""
    folder = Path(
        call(lambda: mlc.download_artifacts(run_id, "adapter", str(dest)), uri=uri, what="download")
    )
    prov = folder / PROVENANCE_NAME
    if not (folder / WEIGHTS_NAME).is_file() or not prov.is_file():
        raise RegistryError(
            f"Run {run_id} has no complete adapter/ artifact folder ({WEIGHTS_NAME} and {PROVENANCE_NAME}): it "
            "did not finish training. Train again or give a finished run."
        )
    files: dict[str, str] = json.loads(prov.read_text(encoding="utf-8")).get("files", {})
    for filename, expected in files.items():
        got = sha256_file(folder / filename) if (folder / filename).is_file() else "missing"
        if got != expected:
            raise RegistryError(
                f"Adapter file {filename} of run {run_id} does not match brandtune.json: sha256 {got}, expected "
                f"{expected}. The artifact was changed after training; train again."
            )
    return folder


def lineage_tags(
    info: dict[str, Any], run_id: str, adapter: Path, flow_run_id: str | None, settings: Settings
) -> dict[str, str]:
    """The version's lineage tags, from the adapter's own provenance."""
    from brandtune.provenance import brandtune_version, git_sha

    tags = {f"brandtune.{key}": str(info.get(key, "")) for key in _LINEAGE}
    tags["brandtune.git_sha"] = str(info.get("git_sha") or git_sha())
    tags["brandtune.version"] = str(info.get("brandtune_version") or brandtune_version())
    tags[ADAPTER_SHA_TAG] = sha256_file(adapter / WEIGHTS_NAME)
    tags[SOURCE_RUN_TAG] = run_id
    for key in ("trigger", "subject", "steps", "rank", "base_family"):
        if key in info:
            tags[f"brandtune.{key}"] = str(info[key])
    images = dataset_size(str(info.get("brand", "")), str(info.get("dataset_fingerprint", "")), settings)
    if images is not None:
        tags["brandtune.dataset_images"] = str(images)
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tags


def dataset_size(brand: str, fingerprint: str, settings: Settings) -> int | None:
    """Images in a local dataset (``None`` when the dataset is not on this machine)."""
    manifest = settings.datasets_dir / brand / fingerprint / "manifest.json"
    try:
        return len(json.loads(manifest.read_text(encoding="utf-8"))["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe(info: dict[str, Any], tags: dict[str, str], run_id: str) -> str:
    """One paragraph saying what the adapter was trained on."""
    images = tags.get("brandtune.dataset_images", "an unknown number of")
    return (
        f"LoRA adapter for brand {info.get('brand', '?')} (trigger {info.get('trigger', '?')!r}), trained on "
        f"dataset {info.get('dataset_fingerprint', '?')} ({images} images) over base model "
        f"{info.get('base_model', '?')} ({info.get('base_revision', '?')}), {info.get('steps', '?')} steps, "
        f"rank {info.get('rank', '?')}, {info.get('resolution', '?')} px. Source run {run_id}."
    )


def _ensure_registered_model(mlc: MlflowClient, name: str, brand: str, uri: str) -> None:
    if find(lambda: mlc.get_registered_model(name), uri=uri, what=f"read {name}") is not None:
        return
    desc = (
        f"LoRA adapters for brand {brand}. Aliases: @candidate (newest), @champion (used by generators), "
        "@previous-champion (rollback)."
    )
    try:
        call(lambda: mlc.create_registered_model(name, description=desc), uri=uri, what=f"create {name}")
    except RegistryError:
        raise
    except Exception as exc:  # created concurrently by another registration
        if "already exists" not in str(exc).lower():
            raise


def log_adapter(mlc: MlflowClient, run_id: str, adapter: Path, info: dict[str, Any], uri: str) -> str:
    """Log ``adapter`` as an ``mlflow.diffusers`` model into run ``run_id``; verify it and mark it READY.

    Returns:
        The LoggedModel id (the version's source is ``models:/<id>``).
    """
    from brandtune.registry._flavor import create_logged_model, log_diffusers_model

    model_id = call(
        lambda: create_logged_model(mlc, run_id, info, MODEL_NAME), uri=uri, what="create the adapter model"
    )
    try:
        call(
            lambda: log_diffusers_model(model_id, run_id, adapter, info),
            uri=uri,
            what="upload the adapter model",
        )
        listed = call(
            lambda: _artifact_names(mlc, model_id), uri=uri, what="list the logged model's artifacts"
        )
        missing = {"MLmodel", f"adapter_weights/{WEIGHTS_NAME}"} - listed
        if missing:
            raise RegistryError(
                f"Logged model {model_id} of run {run_id} lacks {sorted(missing)} after upload."
            )
        call(lambda: mlc.finalize_logged_model(model_id, "READY"), uri=uri, what="finalize the logged model")
        return model_id
    except BaseException:
        _mark_failed(mlc, model_id)
        raise


def _artifact_names(mlc: MlflowClient, model_id: str) -> set[str]:
    names = set()
    for entry in mlc.list_logged_model_artifacts(model_id):
        if entry.is_dir:
            names.update(f.path for f in mlc.list_logged_model_artifacts(model_id, entry.path))
        else:
            names.add(entry.path)
    return names


def _mark_failed(mlc: MlflowClient, model_id: str) -> None:
    try:
        mlc.finalize_logged_model(model_id, "FAILED")
    except Exception as exc:  # the server is what failed; the model stays PENDING and is never a version
        logger.warning(
            "could not mark logged model %s FAILED (%s); it has no registered version", model_id, exc
        )
