"""Plain helpers of the flow tests (tests/flows/): tiny job settings, the registry's aliases, Prefect artifacts and
the training processes a test started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
from threads import THREADS

TINY_TRAINING = {
    "max_train_steps": 2,
    "train_batch_size": 2,
    "num_threads": THREADS,
    "checkpointing_steps": 1,
    "validation_inference_steps": 2,
}
TINY_EVAL: dict[str, Any] = {"seeds": [0], "sampler": {"num_inference_steps": 2}, "include_base": False}
LENIENT_GATE = {"rules": [{"metric": "technical_ok", "comparison": "min", "threshold": 0.0}]}
IMPOSSIBLE_GATE = {"rules": [{"metric": "technical_ok", "comparison": "min", "threshold": 2.0}]}


def _aliases(mlflow_client: Any) -> dict[str, str]:
    return {a: str(v) for a, v in mlflow_client.get_registered_model("acme-lora").aliases.items()}


def _artifact(key: str) -> Any:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(key)
    assert artifact is not None, f"no artifact {key}"
    return artifact


def _version_state(mlflow_client: Any, version: str) -> tuple[dict, dict, int, str]:
    """A version's tags, its training run's tags, the run's number of loss points and its status."""
    mv = mlflow_client.get_model_version("acme-lora", version)
    run = mlflow_client.get_run(mv.run_id)
    return (
        dict(mv.tags),
        dict(run.data.tags),
        len(mlflow_client.get_metric_history(mv.run_id, "loss")),
        run.info.status,
    )


def _training_procs(home: Path) -> list[psutil.Process]:
    """Training processes started by this test session (matched by their BRANDTUNE_HOME)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "brandtune.training" in " ".join(proc.info["cmdline"] or []) and proc.environ().get(
                "BRANDTUNE_HOME"
            ) == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
