"""End to end through a real Prefect server: deploy prefect.yaml, see the UI's run form, run `retrain` from the API,
cancel a training.

Starts `prefect server` and `mlflow server` on free loopback ports, then runs the README's "Scaling out" commands as
written (only their `<...>` placeholders filled in): create the `brandtune-local` process work pool,
`prefect --no-prompt deploy --all`, start a worker with BRANDTUNE_REPO, BRANDTUNE_HOME and MLFLOW_TRACKING_URI. The
UI's run form of `weekly-retrain` is rendered in Debian's headless `chromium` (`--virtual-time-budget` lets the JS
app fetch and render before the DOM is dumped and the screenshot taken); the test installs chromium with apt when it
is missing and skips, naming the reason, only when that install fails. Then it triggers deployments as the UI does
(the API). Every process started here is stopped by PID (process group, then SIGKILL) at the end, also when a test
fails.
"""

from __future__ import annotations

import html
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from deployed import CHROMIUM_FLAGS, WORKER_SETUP_ENV, chromium, deployed_stack
from threads import THREADS

from brandtune import services

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


TINY_TRAINING = {
    "max_train_steps": 2,
    "train_batch_size": 2,
    "num_threads": THREADS,
    "validation_inference_steps": 2,
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


FIX = (
    "BRANDTUNE_REPO is not set on this worker: set it to the brandtune checkout (the folder with flows/ and "
    "prefect.yaml) in the worker's environment and restart the worker"
)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, brandtune_home: Path) -> Iterator[dict[str, Any]]:
    """Prefect server + MLflow server, then the README's commands: work pool, every deployment, a worker."""
    with deployed_stack(tmp_path_factory.mktemp("e2e"), brandtune_home) as stack:
        yield stack


def _worker_log(deployed: dict[str, Any]) -> str:
    return services.tail(deployed["worker"].log_path, 40)


def test_run_form_shows_parameters_with_descriptions(deployed: dict[str, Any], tmp_path: Path) -> None:
    """The Prefect UI's run form of the deployed `weekly-retrain`, rendered in headless Chromium: every field with
    its description, and the choice lists."""
    import json
    import urllib.request

    browser = chromium()
    url = str(deployed["api"].url)
    with urllib.request.urlopen(f"{url}/api/deployments/name/retrain/weekly-retrain", timeout=30) as r:
        deployment_id = json.load(r)["id"]
    shot = tmp_path / "retrain-run-form.png"
    page = f"{url}/deployments/deployment/{deployment_id}/run"
    done = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", done.stdout, flags=re.S))
    text = html.unescape(re.sub(r"\s+", " ", text))
    (tmp_path / "retrain-run-form.txt").write_text(text)
    assert "weekly-retrain" in text and "Parameters" in text, text[:2000]
    for expected in (
        "brand (Optional) Brand slug",
        "training (Optional) Training settings",
        "Max Train Steps (Optional) Optimizer steps to train for.",
        "Mixed Precision (Optional) Mixed precision: fp16 needs a GPU",
        "Accelerate Config (Optional)",
        "evaluation (Optional) Seeds, sampler and the promotion gate's rules.",
        "Seeds (Optional) Fixed seeds per prompt.",
        "Sampler (Optional) Sampler settings, the same for every model compared.",
        "Scheduler (Optional) Sampler: ddim, euler, dpm++ (SD, SDXL) or the model's default; auto:",
        "Num Inference Steps (Optional) Denoising steps per image.",
        "promote (Optional) Make the new adapter @champion",
    ):
        assert expected in text, f"{expected!r} not on the run form:\n{text[:4000]}"
    # dropdowns: the choices of a Literal are listed
    assert "no fp16 bf16" in text and "multi_gpu_ddp" in text
    assert (
        "auto default ddim euler dpm++" in text
    )  # the evaluation sampler's scheduler, nested two levels down
    assert shot.is_file() and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_readme_worker_runs_a_deployment(deployed: dict[str, Any]) -> None:
    """The worker started by the README's command takes a run of a prefect.yaml deployment and completes it."""
    from prefect.deployments import run_deployment

    run = run_deployment("ingest/ingest-photos", parameters={"brand": "acme"}, timeout=600)
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state and run.state.name}: {run.state and run.state.message}\n{_worker_log(deployed)}"
    )


def test_weekly_retrain_deployment_releases_an_adapter_that_passes_its_gate(
    deployed: dict[str, Any], brandtune_home: Path
) -> None:
    """The scheduled deployment as prefect.yaml deploys it (no parameter overridden): it trains with builtin:tiny's
    own recommendation, and the default gate (the first champion must beat the base model) releases it."""
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    run = run_deployment("retrain/weekly-retrain", timeout=1800)
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state and run.state.name}: {run.state and run.state.message}\n{_worker_log(deployed)}"
    )
    mlc = MlflowClient(str(deployed["mlflow"].url))
    model = mlc.get_registered_model("acme-lora")
    candidate = model.aliases["candidate"]
    version = mlc.get_model_version("acme-lora", candidate)
    assert version.tags["brandtune.gate"] == "pass", version.tags.get("brandtune.gate_reason")
    assert "base model" in version.tags["brandtune.gate_explanation"]
    assert model.aliases["champion"] == candidate
    assert version.tags["prefect.flow_run_id"] == str(run.id)
    assert version.tags["prefect.flow_run_url"].endswith(str(run.id))
    train_run = mlc.get_run(version.run_id)
    assert train_run.data.tags["prefect.flow_run_id"] == str(run.id)
    assert train_run.data.params["max_train_steps"] == "300"  # the base's recommendation, not a test setting


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


def test_worker_without_brandtune_repo_fails_the_run_with_the_fix(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    """A worker started without BRANDTUNE_REPO (its own pool, so the README's worker cannot take the run) fails a
    deployment of prefect.yaml's pull steps with the one-line fix, as the run's state message and in its logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    pool = "brandtune-bare"
    services.create_work_pool(pool, deployed["env"])
    with get_client(sync_client=True) as client:
        source = client.read_deployment_by_name("ingest/ingest-photos")
        assert source.pull_steps == [
            {"brandtune.deploy_steps.enter_checkout": {"directory": "{{ $BRANDTUNE_REPO }}"}}
        ]
        deployment_id = client.create_deployment(
            flow_id=source.flow_id,
            name="ingest-photos-bare-worker",
            work_pool_name=pool,
            entrypoint=source.entrypoint,
            path=source.path,
            pull_steps=source.pull_steps,
            parameters={"brand": "acme"},
        )
        bare = services.worker(
            pool, deployed["logs"], deployed["env"], cwd=tmp_path, name="bare-worker", unset=WORKER_SETUP_ENV
        )
        try:
            run = client.create_flow_run_from_deployment(deployment_id)
            state = _wait_final(client, run.id, bare)
            logs = _run_logs(client, run.id, until=FIX)
        finally:
            services.stop(bare)
    assert state.type == StateType.FAILED and state.message == FIX, f"{state.name}: {state.message}"
    assert FIX in logs and "FileNotFoundError" not in logs, logs


def _wait_final(client: Any, run_id: Any, worker: services.Service, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = client.read_flow_run(run_id).state
        if state and state.is_final():
            return state
        assert time.monotonic() < deadline, f"flow run stuck in {state}\n{services.tail(worker.log_path, 40)}"
        time.sleep(1)


def _run_logs(client: Any, run_id: Any, until: str, timeout: float = 30) -> str:
    """The flow run's logs, waiting a little for ``until`` (a run's logs reach the API in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        text = "\n".join(log.message for log in logs)
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(1)
