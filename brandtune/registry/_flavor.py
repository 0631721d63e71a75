"""Log an adapter with MLflow's own ``mlflow.diffusers`` flavor, with a base reference that travels.

``mlflow.diffusers.save_model`` stores ``base_model`` as given and, for anything that is not an absolute or
``./`` path, asks the Hugging Face hub for the repo's *latest* commit (a network call, and not necessarily the commit
the adapter was trained on). brandtune knows the exact base from the adapter's ``brandtune.json``, so the model is
saved with a placeholder absolute path (no hub call) and the flavor's ``base_model`` / ``base_model_revision`` are
then set to the portable reference:

- hub id: ``base_model="org/name"``, ``base_model_revision=<commit>`` (plain ``load_pipeline()`` works);
- ``builtin:*`` and local folders: ``base_model="builtin:tiny"`` (or the folder name) and
  ``base_model_revision="sha256:<content hash>"``; load them through brandtune, or pass
  ``load_pipeline(base_model=<local folder>)``.

The MLmodel's ``metadata.brandtune`` holds the adapter's whole provenance.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MODEL_NAME_DEFAULT = "lora"
PLACEHOLDER_BASE = "/brandtune-base-placeholder"  # absolute: the flavor makes no hub call for it
_COMMIT = re.compile(r"[0-9a-f]{40}")


def flavor_base(info: dict[str, Any]) -> tuple[str, str | None]:
    """The ``(base_model, base_model_revision)`` to record for an adapter's provenance."""
    return str(info["base_model"]), (str(info.get("base_revision") or "") or None)


def is_hub_reference(base_model: str, revision: str | None) -> bool:
    """Whether a recorded base is a hub repo (an ``org/name`` id with a commit sha revision)."""
    return (
        "/" in base_model
        and not base_model.startswith("builtin:")
        and bool(revision and _COMMIT.fullmatch(revision))
    )


class _PinnedDiffusers:
    """A flavor module stand-in for ``Model.log``: ``mlflow.diffusers.save_model``, then the base is pinned."""

    __name__ = "mlflow.diffusers"

    def __init__(self, base_model: str, revision: str | None) -> None:
        self.base_model = base_model
        self.revision = revision

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        import mlflow.diffusers
        from mlflow.models.model import MLMODEL_FILE_NAME

        mlflow.diffusers.save_model(
            path=path, mlflow_model=mlflow_model, base_model=PLACEHOLDER_BASE, **kwargs
        )
        conf = mlflow_model.flavors[mlflow.diffusers.FLAVOR_NAME]
        conf["base_model"] = self.base_model
        if self.revision:
            conf["base_model_revision"] = self.revision
        mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))


def _signature(resolution: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import ColSpec

    return ModelSignature(
        inputs=Schema([ColSpec(type=DataType.string, name="prompt")]),
        outputs=Schema([ColSpec(type=DataType.binary, name="image")]),
        params=ParamSchema(
            [
                ParamSpec(name="num_inference_steps", dtype=DataType.integer, default=30),
                ParamSpec(name="guidance_scale", dtype=DataType.double, default=7.5),
                ParamSpec(name="height", dtype=DataType.integer, default=resolution),
                ParamSpec(name="width", dtype=DataType.integer, default=resolution),
                ParamSpec(name="negative_prompt", dtype=DataType.string, default=""),
            ]
        ),
    )


def create_logged_model(mlc: Any, run_id: str, info: dict[str, Any], name: str) -> str:
    """Create the (PENDING) LoggedModel in the training run's own experiment (``Model.log`` links it to the run).

    ``Model.log`` alone would put it in the *active* experiment (``Default`` outside a run), whose artifact root on
    a sqlite store is ``./mlruns`` under the current directory.
    """
    run = mlc.get_run(run_id)
    model = mlc.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={"brandtune.source_run_id": run_id, "brandtune.base_model": str(info.get("base_model", ""))},
    )
    return str(model.model_id)


def log_diffusers_model(model_id: str, run_id: str, adapter: Path, info: dict[str, Any]) -> None:
    """Save ``adapter`` (folder with the safetensors and ``brandtune.json``) as the artifacts of ``model_id``."""
    from brandtune import _quiet

    _quiet.install()  # before MLflow infers the pip requirements (torch's +cpu label)
    import mlflow.diffusers  # noqa: F401  (the flavor module must be importable)
    from mlflow.models import Model

    base_model, revision = flavor_base(info)
    meta = {"brandtune": dict(info)}
    Model.log(
        artifact_path=None,
        name=MODEL_NAME_DEFAULT,
        flavor=_PinnedDiffusers(base_model, revision),
        flavor_name="diffusers",
        run_id=run_id,
        model_id=model_id,
        adapter_path=str(adapter),
        adapter_type="lora",
        signature=_signature(int(info.get("resolution") or 512)),
        metadata=meta,
    )
