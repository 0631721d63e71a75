"""The Prefect flows on the sample brand, against Prefect's test harness (temporary API) and MLflow on sqlite.

Real Prefect, real MLflow, the built-in tiny model; training runs 2 steps, evaluation 1 seed and 2 sampler steps.
The tests share one registry (session store) and run in order: retrain (first champion), retrain again on the
same photos (nothing trained, v1 untouched) and with force (a new version), a killed training that its retry
resumes, train + a failing gate (champion untouched), generate from the champion, and the failure / timeout paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow

TINY_TRAINING = {
    "max_train_steps": 2,
    "train_batch_size": 2,
    "num_threads": 2,
    "checkpointing_steps": 1,
    "validation_inference_steps": 2,
}
TINY_EVAL: dict[str, Any] = {"seeds": [0], "num_inference_steps": 2, "include_base": False}
LENIENT_GATE = {"rules": [{"metric": "technical_ok", "comparison": "min", "threshold": 0.0}]}
IMPOSSIBLE_GATE = {"rules": [{"metric": "technical_ok", "comparison": "min", "threshold": 2.0}]}


@pytest.fixture(scope="session")
def prefect_harness(brandtune_home: Path) -> None:
    """One temporary Prefect API for the session (PREFECT_HOME is the session's, set by conftest)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.5"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def mlflow_client(brandtune_home: Path) -> Any:
    from brandtune.registry._client import client

    return client()


def _aliases(mlflow_client: Any) -> dict[str, str]:
    return {a: str(v) for a, v in mlflow_client.get_registered_model("acme-lora").aliases.items()}


def _artifact(key: str) -> Any:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(key)
    assert artifact is not None, f"no artifact {key}"
    return artifact


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


def test_retrain_registers_evaluates_and_promotes(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.retrain import retrain_flow

    state = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    version = result["version"]
    assert result["passed"] and result["promoted"]
    aliases = _aliases(mlflow_client)
    assert aliases["candidate"] == version and aliases["champion"] == version
    # lineage both ways: the training run and the version name this flow run
    mv = mlflow_client.get_model_version("acme-lora", version)
    assert mv.tags["prefect.flow_run_id"] == flow_run_id
    assert mlflow_client.get_run(result["mlflow_run_id"]).data.tags["prefect.flow_run_id"] == flow_run_id
    evaluation_run = mlflow_client.get_run(result["evaluation_run_id"])
    assert evaluation_run.data.tags["prefect.flow_run_id"] == flow_run_id
    assert set(result["timings"]) == {"ingest_s", "train_s", "register_s", "evaluate_s"}
    summary = _artifact("retrain-acme-summary")
    assert f"acme-lora v{version}" in summary.data and "PASS" in summary.data
    assert "technical_ok" in _artifact("retrain-acme-metrics").data


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


def test_retrain_on_unchanged_photos_trains_nothing(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    """What the weekly schedule does most weeks: same photos, same settings. v1 is left exactly as it was."""
    from flows.retrain import retrain_flow

    v1 = _aliases(mlflow_client)["champion"]
    before = _version_state(mlflow_client, v1)
    count = len(mlflow_client.search_model_versions("name = 'acme-lora'"))
    state = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["trained"] is False and result["unchanged_version"] == v1 == result["version"]
    assert f"acme-lora v{v1} was trained on exactly this dataset and config" in result["message"]
    assert result["evaluation_run_id"] is None and not result["promoted"], "not re-evaluated unless asked"
    assert _version_state(mlflow_client, v1) == before, (
        "v1's tags and its run's tags and loss curve untouched"
    )
    assert len(mlflow_client.search_model_versions("name = 'acme-lora'")) == count
    summary = _artifact("retrain-acme-summary").data
    assert f"nothing changed, v{v1} untouched" in summary and "nothing to train" in summary
    # asked to, it evaluates the unchanged version again (still training and registering nothing)
    again = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        promote=False,
        evaluate_unchanged=True,
    )
    assert again["trained"] is False and again["evaluation_run_id"] and again["version"] == v1
    assert len(mlflow_client.search_model_versions("name = 'acme-lora'")) == count
    assert _version_state(mlflow_client, v1)[1:] == before[1:], "its training run is still untouched"


def test_retrain_with_force_trains_a_new_version(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.retrain import retrain_flow

    v1 = _aliases(mlflow_client)["champion"]
    before = _version_state(mlflow_client, v1)
    old_run = mlflow_client.get_model_version("acme-lora", v1).run_id
    result = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        promote=False,
        force=True,
    )
    assert result["trained"] is True and result["version"] != v1 and result["mlflow_run_id"] != old_run
    new = mlflow_client.get_model_version("acme-lora", result["version"])
    assert new.tags["brandtune.config_hash"] == before[0]["brandtune.config_hash"], "the same training, anew"
    assert _version_state(mlflow_client, v1) == before, "the earlier version and run are untouched"
    old_dir = Path(before[1]["brandtune.run_dir"])
    assert mlflow_client.get_run(result["mlflow_run_id"]).data.tags["brandtune.run_dir"] != str(old_dir)
    assert (old_dir / "result.json").is_file()


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


def test_train_then_failing_gate_leaves_champion(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.evaluate import evaluate_flow
    from flows.train import train_flow

    champion = _aliases(mlflow_client)["champion"]
    trained = train_flow(brand="acme", training={**TINY_TRAINING, "seed": 1})
    new = trained["version"]["version"]
    assert new != champion and _aliases(mlflow_client)["candidate"] == new
    assert "final loss" in _artifact("train-acme-summary").data

    state = evaluate_flow(
        brand="acme", candidate=new, evaluation={**TINY_EVAL, "gate": IMPOSSIBLE_GATE}, return_state=True
    )
    assert state.is_completed(), state.message
    outcome = state.result()
    assert not outcome["passed"] and not outcome["promoted"]
    assert outcome["champion_version"] == champion
    assert _aliases(mlflow_client)["champion"] == champion
    summary = _artifact("evaluate-acme-summary").data
    assert "FAILED" in summary and "technical_ok" in summary


def test_generate_from_champion_links_gallery(
    prefect_harness: None, tmp_path: Path, torch_threads: None
) -> None:
    from flows.generate import generate_flow

    out = tmp_path / "campaign"
    result = generate_flow(
        brand="acme",
        prompt="a photo of {trigger} {subject}",
        settings=["beach"],
        variations=2,
        generation={"num_inference_steps": 2, "batch_size": 2, "output_dir": str(out)},
    )
    assert result["generated"] == 2 and Path(result["gallery"]).is_file()
    assert Path(result["gallery"]).resolve().as_uri() in _artifact("generate-acme-gallery").data
    assert "gallery" in _artifact("generate-acme-summary").data


def test_ingest_flow_and_a_failing_task_explains_itself(prefect_harness: None, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    result = ingest_flow(brand="acme")
    assert result["num_images"] == 24
    assert result["fingerprint"] in _artifact("ingest-acme-summary").data

    missing = tmp_path / "no-such-folder"
    state = ingest_flow(brand="acme", sources=[str(missing)], return_state=True)
    assert state.is_failed()
    assert str(missing) in state.message, state.message


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
