"""The training flow (flows/train.py) on its own: a killed training that its retry resumes, parameters refused
before anything runs, and a timeout that kills the whole process tree. Nothing here is registered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flow_helpers import TINY_TRAINING, _training_procs

pytestmark = pytest.mark.slow


def test_a_retried_training_resumes_its_own_checkpoint(
    prefect_harness: None, mlflow_client: Any, brandtune_home: Path, acme_dataset: Path, torch_threads: None
) -> None:
    """The training process dies after a checkpoint (killed, as a preempted worker would be); the task's retry,
    in the same flow run, continues from that checkpoint in the same run folder and MLflow run."""
    import json
    import signal
    import threading

    from flows.train import train_flow

    t0 = time.time()
    killed: list[tuple[Path, dict[str, Any]]] = []  # the checkpoint, and its state (pruned later on)

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for marker in brandtune_home.glob("runs/acme/*/checkpoints/checkpoint-*/COMPLETE"):
                run_dir = marker.parents[2]
                if marker.stat().st_mtime > t0 and "prefect-flow-run" in (run_dir / "run.json").read_text():
                    for proc in _training_procs(brandtune_home):
                        proc.send_signal(signal.SIGKILL)
                    killed.append((marker.parent, json.loads((marker.parent / "state.json").read_text())))
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    training = {**TINY_TRAINING, "max_train_steps": 12, "checkpointing_steps": 2, "seed": 3}
    state = train_flow(
        brand="acme",
        training={**training, "retries": 1, "retry_delay_seconds": 0},
        register_version=False,
        return_state=True,
    )
    watcher.join(timeout=10)
    assert killed, "the training was never killed"
    assert state.is_completed(), state.message
    result = state.result()
    checkpoint, checkpoint_state = killed[0]
    first_attempt_run = checkpoint_state["mlflow_run_id"]
    assert checkpoint_state["invocation_id"] == f"prefect-flow-run-{state.state_details.flow_run_id}"
    assert result["trained"] and int(result["resumed_from"]) >= 2
    assert Path(result["run_dir"]) == checkpoint.parents[1], "the retry went back into its own folder"
    assert result["mlflow_run_id"] == first_attempt_run, "and continued its own MLflow run"
    run = mlflow_client.get_run(first_attempt_run)
    assert run.info.status == "FINISHED"
    assert [m.step for m in mlflow_client.get_metric_history(first_attempt_run, "loss")][-1] == 12
    same_config = list(checkpoint.parents[2].glob(f"{result['config_hash']}-*"))
    assert same_config == [checkpoint.parents[1]], "one run folder for the one invocation"


def test_invalid_parameters_are_rejected_before_running(prefect_harness: None) -> None:
    from flows.train import train_flow

    state = train_flow(brand="acme", training={"max_train_steps": 0}, return_state=True)
    assert state.is_failed()
    assert "max_train_steps" in state.message, state.message


def test_training_timeout_kills_the_process_tree(
    prefect_harness: None, brandtune_home: Path, torch_threads: None
) -> None:
    from flows.train import train_flow

    start = time.monotonic()
    state = train_flow(
        brand="acme",
        training={**TINY_TRAINING, "max_train_steps": 100_000, "seed": 2, "timeout_minutes": 0.25},
        register_version=False,
        return_state=True,
    )
    assert state.is_failed()
    assert "timed out" in state.message.lower() or "timeout" in state.message.lower(), state.message
    assert time.monotonic() - start < 120
    left = _training_procs(brandtune_home)
    assert not left, f"training processes left after the timeout: {[p.pid for p in left]}"
