"""brandtune.runlog, brandtune.forwarder and brandtune.sidecar: the trainer's local run log, sent to a real MLflow store.

What MLflow holds after forwarding is what the trainer logged (params, tags, metrics, the config artifact, images,
the dataset input, the end status); a forwarder killed between a send and its cursor write sends that batch again
and MLflow still holds each point once; a server that is down leaves the log on disk, and the doctor sends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_server import free_port
from PIL import Image

from brandtune.forwarder import Forwarder, open_run, read_cursor
from brandtune.runlog import RunLog, log_dir, read_events


def _uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def _write_log(run_dir: Path, steps: int = 40, dataset: Path | None = None) -> str:
    """A run log as a training writes it (no system metrics: the test controls every event)."""
    run_id = open_run(run_dir, "acme", "train-test", None, _uri())
    log = RunLog(run_dir, run_id, system_metrics=False)
    log.log_params({"rank": "4", "learning_rate": "0.001"})
    log.log_dict({"rank": 4, "nested": {"a": 1}}, "config/train_config.json")
    log.set_tags({"brandtune.stage": "train"})
    if dataset is not None:
        log.log_dataset(dataset, "acme-abc", "abc")
    for step in range(1, steps + 1):
        log.log_metrics({"loss": 1.0 / step, "lr": 0.001}, step)
        if step == steps // 2:
            log.log_image(Image.new("RGB", (16, 8), (0, 128, 128)), key="validation", step=step)
    adapter = run_dir / "adapter"
    adapter.mkdir()
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    log.log_artifact(adapter, "adapter")
    log.finish("FINISHED")
    return run_id


def _image_files(client, run_id: str) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, "images"))


def test_the_log_numbers_events_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path, "run-1", system_metrics=False)
    log.log_metrics({"loss": 0.5}, 1)
    log.close()
    with open(log_dir(tmp_path) / "events.jsonl", "ab") as fh:
        fh.write(b'{"seq": 3, "kind": "metr')  # a crash in the middle of a write
    events, _ = read_events(tmp_path)
    assert [e["seq"] for e in events] == [1, 2], "a line without its newline is not read"
    again = RunLog(tmp_path, "run-1", system_metrics=False)  # a resume appends after the last whole line
    again.log_metrics({"loss": 0.4}, 2)
    again.close()
    events, _ = read_events(tmp_path)
    assert [(e["seq"], e["kind"]) for e in events] == [(1, "run"), (2, "metrics"), (3, "run"), (4, "metrics")]


def test_mlflow_holds_what_the_trainer_logged(tmp_path: Path) -> None:
    import mlflow

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    run_dir = tmp_path / "run"
    run_id = _write_log(run_dir, dataset=dataset)
    forwarder = Forwarder(run_dir, _uri())
    assert forwarder.finish(wait_s=60)
    client = mlflow.MlflowClient(_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"rank": "4", "learning_rate": "0.001"}
    assert run.data.tags["brandtune.stage"] == "train" and run.data.tags["mlflow.loggedImages"] == "True"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 41))
    config = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/train_config.json")
    assert json.loads(Path(config).read_text()) == {"rank": 4, "nested": {"a": 1}}
    assert [a.path for a in client.list_artifacts(run_id, "adapter")] == [
        "adapter/pytorch_lora_weights.safetensors"
    ]
    images = _image_files(client, run_id)
    assert len(images) == 2 and images[0].startswith("images/validation+step+20+timestamp+")
    assert {Path(p).suffix for p in images} == {".png", ".webp"}
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("acme-abc", "abc")]
    events, _ = read_events(run_dir)
    assert read_cursor(run_dir).seq == events[-1]["seq"] and Forwarder(run_dir, _uri()).pending() == 0


def test_mlflow_keeps_one_row_per_identical_metric_point(tmp_path: Path) -> None:
    """What the forwarder's exactly-once rests on: MLflow's SQL store drops a point it holds (same key, step,
    timestamp and value); only a new timestamp makes a second point."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(_uri())
    run_id = open_run(tmp_path, "acme", "dup", None, _uri())
    point = Metric("loss", 0.25, 1_700_000_000_000, 7)
    client.log_batch(run_id, metrics=[point])
    client.log_batch(run_id, metrics=[point])
    assert len(client.get_metric_history(run_id, "loss")) == 1
    client.log_batch(run_id, metrics=[Metric("loss", 0.25, 1_700_000_000_001, 7)])
    assert len(client.get_metric_history(run_id, "loss")) == 2


def _forward_in_child(run_dir: Path, fault: str | None) -> int:
    env = {**os.environ, "BRANDTUNE_FAULT": fault or "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "brandtune.sidecar", str(run_dir)]
    return subprocess.run(cmd, env=env, timeout=180, capture_output=True).returncode


@pytest.mark.parametrize("kind", ["metrics", "image"])
def test_a_forwarder_killed_after_a_send_resends_without_duplicates(tmp_path: Path, kind: str) -> None:
    import mlflow

    run_dir = tmp_path / "run"
    run_id = _write_log(run_dir)
    assert _forward_in_child(run_dir, f"forwarder.after_send:{kind}") == -9  # killed after the send
    client = mlflow.MlflowClient(_uri())
    held = client.get_metric_history(run_id, "loss") if kind == "metrics" else _image_files(client, run_id)
    assert held, f"the {kind} batch reached MLflow before the kill"
    cursor = read_cursor(run_dir)
    assert cursor.run_id == run_id
    assert Forwarder(run_dir, _uri()).pending() > 0, "the cursor was not moved past the batch sent"
    assert _forward_in_child(run_dir, None) == 0
    losses = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 41)), "every step exactly once"
    assert len(_image_files(client, run_id)) == 2, "the image once (and its thumbnail)"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_server_that_is_down_leaves_the_log_on_disk_and_the_doctor_sends_it(tmp_path: Path) -> None:
    import mlflow

    from brandtune.forwarder import check
    from brandtune.settings import Settings

    settings = Settings.from_env()
    run_dir = settings.home / "runs" / "acme" / f"outage-{tmp_path.name}"
    run_id = _write_log(run_dir, steps=5)
    down = Forwarder(run_dir, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert down.step() > 0 and down.down_since is not None, "a failed send backs off, never raises"
    assert not down.finish(wait_s=1.0)
    events, _ = read_events(run_dir)
    assert down.pending() == len(events), "nothing acknowledged, everything kept"
    found = [f for f in check(settings, brand="acme") if str(run_dir) in f.subject]
    assert len(found) == 1 and not found[0].fixed and f"{len(events)} event(s)" in found[0].problem
    fixed = [f for f in check(settings, brand="acme", fix=True) if str(run_dir) in f.subject]
    assert fixed[0].fixed
    assert len(mlflow.MlflowClient(_uri()).get_metric_history(run_id, "loss")) == 5
    assert not [f for f in check(settings, brand="acme") if str(run_dir) in f.subject]


def test_system_metrics_keep_the_names_mlflow_gives_them() -> None:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    from brandtune.runlog import SystemSampler

    names = set()
    for monitor in (CPUMonitor(), DiskMonitor(), NetworkMonitor()):
        monitor.collect_metrics()
        names |= {f"system/{k}" for k in monitor.aggregate_metrics()}
    sample = SystemSampler().sample()
    assert {k for k in sample if "/gpu_" not in k} == names
    assert all(isinstance(v, float) for v in sample.values())
