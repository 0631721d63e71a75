"""How the flows fail: retries only on transient failures, a time-out on every flow and task, a bounded wait for a
``brandtune-gpu`` slot that names the limit, and BRANDTUNE_GPU_SLOTS reaching an existing limit. Real Prefect (the
session's test harness), real MLflow, real training processes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import requests
from flow_helpers import TINY_TRAINING

from brandtune.errors import ConfigError, RegistryError, TrainingError
from brandtune.services import free_port
from brandtune.training.launch import TrainingKilledError
from brandtune.training.lock import RunDirLockedError
from flows._params import Timeouts
from flows._tasks import GPU_LIMIT, retry_worthy


def _refused() -> requests.exceptions.ConnectionError:
    """A real refused connection (nothing listens on the port)."""
    try:
        requests.get(f"http://127.0.0.1:{free_port()}/health", timeout=5)
    except requests.exceptions.ConnectionError as exc:
        return exc
    raise AssertionError("something answered on a free port")


def test_only_transient_failures_are_retried() -> None:
    try:
        raise RegistryError("could not register: the MLflow server is unreachable") from _refused()
    except RegistryError as exc:
        down = exc
    assert retry_worthy(_refused()) and retry_worthy(down)
    assert retry_worthy(TrainingKilledError("training of brand 'acme' was killed by signal 9 (SIGKILL)"))
    nan = TrainingError(
        "training of brand 'acme' failed: loss became nan at step 3; last good checkpoint: none"
    )
    assert not retry_worthy(nan)
    assert not retry_worthy(ConfigError("BRANDTUNE_GPU_SLOTS='x' is not a whole number"))
    # deterministic even when the text looks transient, or when a transient error is its cause
    try:
        raise ConfigError("time-out 'x': timed out is not a number") from _refused()
    except ConfigError as exc:
        assert not retry_worthy(exc)
    assert not retry_worthy(RunDirLockedError("run folder /r is in use by another training: pid 1"))


def test_every_flow_and_task_has_a_time_out_settable_through_the_environment() -> None:
    from flows import _tasks
    from flows.evaluate import evaluate_flow
    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from flows.retrain import retrain_flow
    from flows.train import train_flow

    for flow in (ingest_flow, train_flow, evaluate_flow, generate_flow, retrain_flow):
        assert flow.timeout_seconds and flow.timeout_seconds >= 3 * 3600, flow.name
    tasks = [
        t for t in vars(_tasks).values() if hasattr(t, "task_run_name") and hasattr(t, "timeout_seconds")
    ]
    assert len(tasks) >= 7
    for task in tasks:
        assert task.timeout_seconds and task.timeout_seconds >= 1800, task.name
    assert train_flow.timeout_seconds > _tasks.train_task.timeout_seconds, (
        "the flow outlives its training task"
    )
    custom = Timeouts.from_env({"BRANDTUNE_TIMEOUT_TRAIN_S": "60", "BRANDTUNE_GPU_WAIT_S": "5"})
    assert (custom.train, custom.gpu_wait, custom.ingest) == (60, 5, Timeouts().ingest)
    with pytest.raises(ConfigError, match=r"BRANDTUNE_GPU_WAIT_S='soon': .* positive number of seconds"):
        Timeouts.from_env({"BRANDTUNE_GPU_WAIT_S": "soon"})


def _task_runs(flow_run_id: Any, name: str, wait_s: float = 30.0) -> list[Any]:
    """The flow run's task runs named ``name*``, waiting up to ``wait_s`` until they reached the API in a final state
    (task runs are reported through events, so they can appear, or settle, a moment after the flow run ended)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            found = [r for r in runs if r.name.startswith(name)]
            settled = found and all(r.state is not None and r.state.is_final() for r in found)
            if settled or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


@pytest.mark.skipif(
    "__import__('torch').cuda.is_available()", reason="fp16 must be impossible here (no CUDA)"
)
def test_a_deterministic_training_failure_is_not_retried(
    prefect_harness: None, acme_dataset: Path, torch_threads: None
) -> None:
    """fp16 on a machine without CUDA fails the same way every time: with retries 2, the training runs once."""
    from flows.train import train_flow

    training = {**TINY_TRAINING, "mixed_precision": "fp16", "retries": 2, "retry_delay_seconds": 0}
    state = train_flow(brand="acme", training=training, register_version=False, return_state=True)
    assert state.is_failed()
    assert "mixed_precision 'fp16' needs a CUDA GPU" in state.message, state.message
    [train] = _task_runs(state.state_details.flow_run_id, "train-lora")
    assert train.run_count == 1, "a deterministic failure was retried"


@pytest.fixture
def gpu_slots(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set BRANDTUNE_GPU_SLOTS for a test; the limit is brought back to 1 slot afterwards."""
    from flows._tasks import ensure_gpu_limit

    def set_slots(n: int) -> int:
        monkeypatch.setenv("BRANDTUNE_GPU_SLOTS", str(n))
        return ensure_gpu_limit(logging.getLogger("test"))

    yield set_slots
    monkeypatch.setenv("BRANDTUNE_GPU_SLOTS", "1")
    ensure_gpu_limit(logging.getLogger("test"))


def _limit() -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(GPU_LIMIT)


def test_a_changed_slot_count_reaches_the_existing_limit(
    gpu_slots: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gpu_slots(1)
    assert _limit().limit == 1
    with caplog.at_level(logging.INFO, logger="test"):
        assert gpu_slots(3) == 3
    assert _limit().limit == 3
    assert f"{GPU_LIMIT}: slots 1 -> 3 (BRANDTUNE_GPU_SLOTS)" in caplog.text


def test_the_wait_for_a_gpu_slot_is_bounded_and_says_what_it_waits_for(
    gpu_slots: Any, monkeypatch: pytest.MonkeyPatch, acme_dataset: Path, brandtune_home: Path
) -> None:
    """Every slot is taken; the training task gives up after BRANDTUNE_GPU_WAIT_S with one line naming the limit,
    its slots and how to raise them, and no training starts."""
    from prefect.concurrency.sync import concurrency

    from flows.train import train_flow

    gpu_slots(1)
    monkeypatch.setenv("BRANDTUNE_GPU_WAIT_S", "2")
    runs_before = set((brandtune_home / "runs").glob("acme/*"))
    with concurrency(GPU_LIMIT, occupy=1, strict=True):
        state = train_flow(
            brand="acme",
            training={**TINY_TRAINING, "seed": 11, "retries": 1, "retry_delay_seconds": 0},
            register_version=False,
            return_state=True,
        )
    assert state.is_failed()
    message = state.message
    assert f"no free slot of the Prefect concurrency limit {GPU_LIMIT} after waiting 2 s" in message, message
    assert "1 of 1 slot(s) in use" in message and "raise BRANDTUNE_GPU_SLOTS (now 1)" in message, message
    assert set((brandtune_home / "runs").glob("acme/*")) == runs_before, "no training started"
    [train] = _task_runs(state.state_details.flow_run_id, "train-lora")
    assert train.run_count == 1, "giving up the wait is not retried"
