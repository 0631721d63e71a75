"""What a training produced, as it crosses the process boundary and sits in a run folder's ``result.json``.

The training process writes it as JSON (:meth:`TrainResult.model_dump_json`); whoever reads it back (the launcher,
a retry of a finished training) validates it with :func:`read_result_file`, so a missing or malformed result is an
error that names the file, never a half-filled dict.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brandtune.errors import TrainingError
from brandtune.fsutil import atomic_write_json


class TrainResult(BaseModel):
    """What a training produced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: Path = Field(description="The run folder (checkpoints/, adapter/, result.json).")
    adapter_dir: Path = Field(description="The adapter folder.")
    mlflow_run_id: str | None = Field(
        description="The MLflow run (None on processes other than the main one)."
    )
    steps: int = Field(ge=0, description="Optimizer steps trained in all (including those before a resume).")
    final_loss: float = Field(description="The last step's loss.")
    cache_hit: bool = Field(description="Whether the encoded dataset came from the latent cache.")
    resumed_from: int = Field(
        default=0, ge=0, description="The step this process continued from (0: it started at the beginning)."
    )
    config_hash: str = Field(
        default="", description="The training's identity (dataset + resolved config + base and revision)."
    )
    invocation_id: str = Field(
        default="", description="Who ran it (a Prefect flow run, or a fresh local id)."
    )


def write_result_file(path: Path, result: TrainResult) -> None:
    """Write ``result`` to ``path`` as JSON, atomically."""
    atomic_write_json(path, result.model_dump(mode="json"))


def read_result_file(path: Path, what: str = "training") -> TrainResult:
    """The :class:`TrainResult` in ``path``, validated.

    Args:
        path: A ``result.json`` (a run folder's, or the one a launched child writes).
        what: Names the training in the error message (e.g. ``training of brand 'acme'``).

    Raises:
        TrainingError: the file is missing, unreadable or not a valid result.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingError(f"{what} wrote no result: {path} is missing") from None
    except OSError as exc:
        raise TrainingError(f"{what}: its result {path} cannot be read ({exc})") from exc
    try:
        return TrainResult.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise TrainingError(
            f"{what}: its result {path} is not a valid training result ({problems}); "
            "train again (a run folder with a broken result.json: remove that file, or choose another output_dir)"
        ) from exc
