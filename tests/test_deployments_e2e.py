"""End to end through a real Prefect server: deploy prefect.yaml, run `retrain` from the API, cancel a training.

Starts `prefect server` and `mlflow server` on free loopback ports, creates the `brandtune-local` process work pool,
runs `prefect --no-prompt deploy --all`, starts a worker, then triggers deployments as the UI does (the API). Every
process started here is stopped by PID (process group, then SIGKILL) at the end, also when a test fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from brandtune import services

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_TRAINING = {
    "max_train_steps": 2,
    "train_batch_size": 2,
    "num_threads": 2,
    "validation_inference_steps": 2,
}
TINY_EVAL = {
    "seeds": [0],
    "num_inference_steps": 2,
    "include_base": False,
    "gate": {"rules": [{"metric": "technical_ok", "comparison": "min", "threshold": 0.0}]},
}


def training_processes(home: Path) -> list[psutil.Process]:
    """`brandtune.training` processes whose BRANDTUNE_HOME is this session's."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "brandtune.training" in cmdline and proc.environ().get("BRANDTUNE_HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, brandtune_home: Path) -> Iterator[dict[str, Any]]:
    """Prefect server + MLflow server + worker, with every deployment of prefect.yaml."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("e2e")
    logs, prefect_home = root / "logs", root / "prefect"
    p_port, m_port = services.free_port(), services.free_port()
    with services.ServiceStack() as stack:
        api = stack.add(services.prefect_server(p_port, logs, prefect_home))
        mlflow = stack.add(services.mlflow_server(m_port, logs))
        services.wait_http(api, f"{api.url}/api/health", timeout=180)
        services.wait_http(mlflow, f"{mlflow.url}/health", timeout=180)
        env = services.prefect_env(
            f"{api.url}/api",
            prefect_home,
            MLFLOW_TRACKING_URI=str(mlflow.url),
            BRANDTUNE_REPO=str(REPO_ROOT),
            BRANDTUNE_HOME=str(brandtune_home),
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_RUNNER_POLL_FREQUENCY="2",
        )
        services.create_work_pool("brandtune-local", env)
        out = services.deploy_all(REPO_ROOT, env)
        assert "weekly-retrain" in out, out
        worker = stack.add(services.worker("brandtune-local", logs, env, cwd=REPO_ROOT))
        old_uri = os.environ["MLFLOW_TRACKING_URI"]
        os.environ["MLFLOW_TRACKING_URI"] = str(mlflow.url)
        try:
            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                yield {"api": api, "mlflow": mlflow, "worker": worker, "stack": stack, "env": env}
        finally:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
            stack.remember_descendants()
    # stack exit stopped every service and its descendants
    for service in (api, mlflow, worker):
        assert (
            not psutil.pid_exists(service.pid) or psutil.Process(service.pid).status() == psutil.STATUS_ZOMBIE
        )


def _worker_log(deployed: dict[str, Any]) -> str:
    return services.tail(deployed["worker"].log_path, 40)


def test_retrain_deployment_from_the_api(deployed: dict[str, Any], brandtune_home: Path) -> None:
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    run = run_deployment(
        "retrain/weekly-retrain",
        parameters={"brand": "acme", "training": TINY_TRAINING, "evaluation": TINY_EVAL},
        timeout=900,
    )
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state and run.state.name}: {run.state and run.state.message}\n{_worker_log(deployed)}"
    )
    mlc = MlflowClient(str(deployed["mlflow"].url))
    model = mlc.get_registered_model("acme-lora")
    candidate = model.aliases["candidate"]
    assert model.aliases["champion"] == candidate  # the lenient gate passed
    version = mlc.get_model_version("acme-lora", candidate)
    assert version.tags["prefect.flow_run_id"] == str(run.id)
    assert version.tags["prefect.flow_run_url"].endswith(str(run.id))
    assert mlc.get_run(version.run_id).data.tags["prefect.flow_run_id"] == str(run.id)


def test_cancel_mid_training_leaves_no_training_process(
    deployed: dict[str, Any], brandtune_home: Path, acme_dataset: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    before = {p.pid for p in training_processes(brandtune_home)}
    t0 = time.time()
    training = {**TINY_TRAINING, "max_train_steps": 100_000, "seed": 7, "checkpointing_steps": 1}
    run = run_deployment("train/train-lora", parameters={"brand": "acme", "training": training}, timeout=0)
    deadline = time.monotonic() + 300
    started: list[psutil.Process] = []
    while not started:
        assert time.monotonic() < deadline, f"training never started\n{_worker_log(deployed)}"
        started = [p for p in training_processes(brandtune_home) if p.pid not in before]
        time.sleep(1)
    # mid-training: the loop has written a checkpoint of this run
    while not [
        c for c in brandtune_home.glob("runs/acme/*/checkpoints/checkpoint-*") if c.stat().st_mtime > t0
    ]:
        assert time.monotonic() < deadline, f"no checkpoint written\n{_worker_log(deployed)}"
        assert any(p.is_running() for p in started), f"training ended early\n{_worker_log(deployed)}"
        time.sleep(1)
    pids = {p.pid for p in started} | {c.pid for p in started for c in p.children(recursive=True)}
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
        deadline = time.monotonic() + 180
        while True:
            state = client.read_flow_run(run.id).state
            if state and state.type in (StateType.CANCELLED, StateType.CRASHED, StateType.FAILED):
                break
            assert time.monotonic() < deadline, f"flow run stuck in {state}\n{_worker_log(deployed)}"
            time.sleep(1)
    assert state.type == StateType.CANCELLED, f"{state.name}: {state.message}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [p for p in pids if psutil.pid_exists(p)]:
        time.sleep(0.5)
    left = [p for p in training_processes(brandtune_home) if p.pid not in before]
    assert not left, f"training processes left after cancel: {[(p.pid, p.cmdline()) for p in left]}"
