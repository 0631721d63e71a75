"""``register()``: log a training run's adapter as an ``mlflow.diffusers`` model and make it a version.

Registration is one state machine whose every step is idempotent, so a crash anywhere is repaired by running
``register`` again (or ``brandtune doctor --fix``):

1. read the run; look its version up by the tag ``brandtune.source_run_id`` (one version per training run; among
   duplicates left by older code the one :func:`~brandtune.registry._versions.canonical` names, and a FAILED one
   is deleted);
2. with none: download ``adapter/``, check every file against ``brandtune.json``, log it with the
   ``mlflow.diffusers`` flavor into the *same* run (a LoggedModel, listed back and marked READY);
3. create the model version with its lineage tags and description in the same call. ``create_model_version`` is
   not idempotent, so it is never retried blindly: after a transient failure the version is looked up by its
   source run first, and a duplicate that a lost answer produced anyway is deleted at once;
4. wait for READY; set any lineage tag that is missing; then tag ``brandtune.registration=complete``;
5. move ``@candidate`` to it unless it points at a newer version. Every alias move refuses a version that is not
   READY and complete, so no alias ever sees a half-registered version.

Steps 3 and 5 run under the registry's host-local lock (:func:`~brandtune.registry._aliases.registry_lock`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import RegistryError
from brandtune.faults import fault_point
from brandtune.fsutil import sha256_file
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME
from brandtune.provenance import flow_run_id as current_flow_run_id
from brandtune.registry._aliases import move_candidate, registry_lock
from brandtune.registry._client import (
    ATTEMPTS,
    BASE_DELAY_S,
    call,
    check_reachable,
    client,
    find,
    is_transient,
    unreachable,
)
from brandtune.registry._versions import (
    ADAPTER_SHA_TAG,
    COMPLETE,
    COMPLETE_TAG,
    READY,
    REQUIRED_TAGS,
    SOURCE_RUN_TAG,
    RegisteredVersion,
    canonical,
    model_name,
    versions,
)
from brandtune.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

MODEL_NAME = "lora"  # the LoggedModel's name inside the run
_LINEAGE = ("dataset_fingerprint", "base_model", "base_revision", "config_hash", "git_sha")
READY_WAIT_S = 120.0


def register(
    brand: str, run_id: str, *, settings: Settings | None = None, flow_run_id: str | None = None
) -> RegisteredVersion:
    """Register the adapter of training run ``run_id`` as a new version of ``<brand>-lora`` with ``@candidate``.

    Safe to run again at any time: it finishes what an interrupted registration of the same run left.

    Args:
        brand: Brand slug (the model is ``<brand>-lora``).
        run_id: The MLflow run that trained the adapter (its ``adapter/`` artifacts are used).
        settings: Tracking URI and home; read from the environment when omitted.
        flow_run_id: Prefect flow run to record; default: env ``PREFECT__FLOW_RUN_ID``.

    Returns:
        The version (the existing one when this run was registered before).

    Raises:
        RegistryError: unknown run, a run of another brand, adapter files that do not match their hashes, a
            version that ended FAILED, or a tracking server that stayed unreachable (the message names the URI
            and how to start one).
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
    flow_run_id = flow_run_id or current_flow_run_id() or run.data.tags.get("prefect.flow_run_id")
    version = existing_version(mlc, name, run_id, uri)
    if version is not None:
        logger.info("run %s is already %s version %s", run_id, name, version.version)
    else:
        version = _create(mlc, brand, run_id, settings, flow_run_id)
    version = complete_version(mlc, version, settings, flow_run_id)
    with registry_lock(settings, name):
        if move_candidate(mlc, name, uri, version):
            logger.info("%s@candidate -> v%s", name, version.version)
    return _read_version(mlc, name, version.version, uri)


def _get_run(mlc: MlflowClient, run_id: str, uri: str) -> Any:
    run = find(lambda: mlc.get_run(run_id), uri=uri, what=f"read run {run_id}")
    if run is None:
        raise RegistryError(
            f"No MLflow run {run_id!r} in the tracking store at {uri}: give the run id printed by "
            "`brandtune train` (or shown in the MLflow UI under experiment brandtune/<brand>)."
        )
    return run


def _read_version(mlc: MlflowClient, name: str, number: str, uri: str) -> RegisteredVersion:
    mv = call(lambda: mlc.get_model_version(name, number), uri=uri, what=f"read {name}/{number}")
    return RegisteredVersion.from_mlflow(mv)


def _aliased(mlc: MlflowClient, name: str, uri: str) -> set[str]:
    model = find(lambda: mlc.get_registered_model(name), uri=uri, what=f"read {name}")
    return {str(v) for v in (getattr(model, "aliases", None) or {}).values()}


def existing_version(mlc: MlflowClient, name: str, run_id: str, uri: str) -> RegisteredVersion | None:
    """The version already made from ``run_id`` (the canonical one among duplicates), or None.

    A FAILED version of the run that no alias points at is deleted here: it can never become usable.
    """
    rows = versions(mlc, name, uri, f"tags.`{SOURCE_RUN_TAG}` = '{run_id}'")
    if not rows:
        return None
    aliased = _aliased(mlc, name, uri)
    for row in rows:
        if row.status == "FAILED_REGISTRATION" and row.version not in aliased:
            logger.warning("deleting %s version %s: its registration FAILED", name, row.version)
            find(
                lambda r=row: mlc.delete_model_version(name, r.version),
                uri=uri,
                what="delete a failed version",
            )
    keep = canonical(rows, aliased)
    if keep is not None and len(rows) > 1:
        logger.warning(
            "run %s has %d versions of %s; using v%s (`brandtune doctor --fix` removes the others)",
            run_id,
            len(rows),
            name,
            keep.version,
        )
    return keep


def _create(
    mlc: MlflowClient, brand: str, run_id: str, settings: Settings, flow_run_id: str | None
) -> RegisteredVersion:
    """Steps 2-3: log the adapter model into the run, then create its one version (under the registry lock)."""
    uri, name = settings.tracking_uri, model_name(brand)
    with tempfile.TemporaryDirectory(prefix="brandtune-register-") as tmp:
        adapter = download_adapter(mlc, run_id, Path(tmp), uri)
        info = json.loads((adapter / PROVENANCE_NAME).read_text(encoding="utf-8"))
        model_id = log_adapter(mlc, run_id, adapter, info, uri)
        fault_point("registry.after_logged_model")
        tags = lineage_tags(info, run_id, adapter, flow_run_id, settings)
        description = describe(info, tags, run_id)
    _ensure_registered_model(mlc, name, brand, uri)
    with registry_lock(settings, name):
        found = existing_version(mlc, name, run_id, uri)  # another process may have made it meanwhile
        if found is not None:
            return found
        version = _create_version(mlc, name, run_id, model_id, tags, description, uri)
    fault_point("registry.after_create_version")
    logger.info("registered run %s as %s version %s", run_id, name, version.version)
    return version


def _create_version(
    mlc: MlflowClient,
    name: str,
    run_id: str,
    model_id: str,
    tags: dict[str, str],
    description: str,
    uri: str,
) -> RegisteredVersion:
    """``create_model_version`` without a blind retry: a transient failure is followed by a look-up by source
    run (the request may have been applied before its answer was lost), and only then by another try."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            mv = mlc.create_model_version(
                name,
                f"models:/{model_id}",
                run_id=run_id,
                tags=tags,
                description=description,
                model_id=model_id,
            )
            return _drop_duplicates(mlc, name, run_id, RegisteredVersion.from_mlflow(mv), uri)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == ATTEMPTS:
                raise unreachable(uri, exc, f"create a version of {name}") from exc
            logger.warning("create a version of %s: %s; looking it up before another try", name, exc)
            time.sleep(BASE_DELAY_S * 2 ** (attempt - 1))
            found = existing_version(mlc, name, run_id, uri)
            if found is not None:
                return found
    raise AssertionError("unreachable")  # pragma: no cover


def _drop_duplicates(
    mlc: MlflowClient, name: str, run_id: str, made: RegisteredVersion, uri: str
) -> RegisteredVersion:
    """When the run has another version too (a retried request applied twice, a writer on another host), keep the
    canonical one and delete ``made`` if it is not that one (only ever this process's own version)."""
    keep = existing_version(mlc, name, run_id, uri)
    if keep is None or keep.version == made.version:
        return made
    logger.warning(
        "%s: run %s already had v%s; deleting the duplicate v%s", name, run_id, keep.version, made.version
    )
    find(lambda: mlc.delete_model_version(name, made.version), uri=uri, what=f"delete {name}/{made.version}")
    return keep


def complete_version(
    mlc: MlflowClient, version: RegisteredVersion, settings: Settings, flow_run_id: str | None = None
) -> RegisteredVersion:
    """Step 4: wait for READY, set any missing lineage tag, then tag the registration complete (idempotent).

    Raises:
        RegistryError: the version ended FAILED_REGISTRATION, or stayed pending for :data:`READY_WAIT_S`.
    """
    uri, name, number = settings.tracking_uri, version.name, version.version
    version = _wait_ready(mlc, version, uri)
    if version.complete:
        return version
    missing = [key for key in REQUIRED_TAGS if not version.tags.get(key)]
    if missing:
        run_id = version.tags.get(SOURCE_RUN_TAG) or version.run_id
        with tempfile.TemporaryDirectory(prefix="brandtune-register-") as tmp:
            adapter = download_adapter(mlc, run_id, Path(tmp), uri)
            info = json.loads((adapter / PROVENANCE_NAME).read_text(encoding="utf-8"))
            tags = lineage_tags(info, run_id, adapter, flow_run_id, settings)
        for key, value in tags.items():
            if not version.tags.get(key):
                call(
                    lambda k=key, v=value: mlc.set_model_version_tag(name, number, k, v),
                    uri=uri,
                    what=f"tag {name} version {number}",
                )
    call(
        lambda: mlc.set_model_version_tag(name, number, COMPLETE_TAG, COMPLETE),
        uri=uri,
        what=f"tag {name} version {number}",
    )
    fault_point("registry.after_complete_tag")
    return _read_version(mlc, name, number, uri)


def _wait_ready(mlc: MlflowClient, version: RegisteredVersion, uri: str) -> RegisteredVersion:
    deadline = time.monotonic() + READY_WAIT_S
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = _read_version(mlc, version.name, version.version, uri)
    if version.status != READY:
        raise RegistryError(
            f"{version.name} version {version.version} is {version.status}, not READY: run `brandtune doctor "
            f"--fix` to remove it, then register run {version.run_id} again."
        )
    return version


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

    Idempotent: a READY model of the run with the same weights (an earlier attempt that stopped before its version
    was made) is used again instead of uploading another copy.

    Returns:
        The LoggedModel id (the version's source is ``models:/<id>``).
    """
    from brandtune.registry._flavor import create_logged_model, log_diffusers_model

    sha = sha256_file(adapter / WEIGHTS_NAME)
    earlier = _ready_logged_model(mlc, run_id, sha, uri)
    if earlier is not None:
        logger.info("run %s already has the READY adapter model %s; using it", run_id, earlier)
        return earlier
    model_id = call(
        lambda: create_logged_model(mlc, run_id, info, MODEL_NAME), uri=uri, what="create the adapter model"
    )
    try:
        call(
            lambda: mlc.set_logged_model_tags(model_id, {ADAPTER_SHA_TAG: sha}),
            uri=uri,
            what="tag the adapter model",
        )
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


def _ready_logged_model(mlc: MlflowClient, run_id: str, sha: str, uri: str) -> str | None:
    """A READY LoggedModel of ``run_id`` whose weights have sha256 ``sha``, or None."""
    run = call(lambda: mlc.get_run(run_id), uri=uri, what=f"read run {run_id}")
    query = f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}' AND tags.`{ADAPTER_SHA_TAG}` = '{sha}'"
    found = call(
        lambda: mlc.search_logged_models([run.info.experiment_id], filter_string=query),
        uri=uri,
        what=f"list the adapter models of run {run_id}",
    )
    ready = [m for m in found if str(m.status).endswith("READY")]  # the store cannot filter on status
    return str(ready[0].model_id) if ready else None


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
