"""brandtune.training.launch: a child's tqdm refreshes are throttled, everything else passes; two processes under
accelerate train one adapter and their result crosses the process boundary as a validated TrainResult; the
package's API imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from training_helpers import quick

from brandtune.training import TrainResult
from brandtune.training.launch import ProgressLines


def test_progress_bar_refreshes_are_throttled_in_either_unit() -> None:
    shown: list[str] = []
    lines = ProgressLines(shown.append, every=3600.0)
    lines("INFO brandtune.training.run: new training in /tmp/run: starting from step 0")
    lines("train:   0%|          | 0/300 [00:00<?, ?step/s]")
    lines("train:   0%|          | 1/300 [00:24<2:03:12, 24.72s/step, loss=0.2258]")  # slow: s/step
    lines("train:  30%|###       | 90/300 [00:09<00:21, 9.80step/s, loss=0.1900]")  # fast: step/s
    lines(
        "train:  40%|####      | 120/300 [00:12<00:18, 9.90step/s, loss=0.1800]\rtrain:  41%|####  | 123/300 [00:12<00:18, 9.9step/s]"
    )
    lines("   ")
    lines("train: 100%|##########| 300/300 [00:30<00:00, 9.90step/s, loss=0.1700]")
    lines("WARNING brandtune.training.loop: loss is NaN at step 12")
    assert shown == [
        "INFO brandtune.training.run: new training in /tmp/run: starting from step 0",
        "train:   0%|          | 0/300 [00:00<?, ?step/s]",  # the first refresh shows
        "train: 100%|##########| 300/300 [00:30<00:00, 9.90step/s, loss=0.1700]",  # a finished bar always does
        "WARNING brandtune.training.loop: loss is NaN at step 12",
    ]


def test_progress_bar_shows_again_after_the_interval() -> None:
    shown: list[str] = []
    lines = ProgressLines(shown.append, every=0.0)
    for step in range(3):
        lines(f"train:   {step}%|   | {step}/300 [00:0{step}<00:10, 9.9step/s]")
    assert len(shown) == 3


def test_the_package_exports_its_api_and_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, brandtune.training as t; "
        "heavy = [m for m in ('torch', 'diffusers', 'accelerate', 'peft', 'transformers', 'mlflow', 'prefect') "
        "if m in sys.modules]; assert not heavy, heavy; "
        "assert sorted(t.__all__) == ['TrainConfig', 'TrainResult', 'launch', 'train'], t.__all__; "
        "from brandtune.training import TrainConfig, TrainResult, launch, train; "
        "import brandtune.training.launch, brandtune.training.run; "
        "from brandtune.training import launch as again; "
        "assert callable(train) and callable(launch) and again is launch and launch.__module__.endswith('.launch'); "
        "assert TrainConfig.__module__ == 'brandtune.config.train' and TrainResult.model_fields"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.usefixtures("torch_threads", "acme_dataset")
def test_two_process_accelerate_launch(tmp_path: Path) -> None:
    from brandtune.training import launch

    lines: list[str] = []
    result = launch(quick(tmp_path, max_train_steps=3), num_processes=2, on_line=lines.append)
    assert isinstance(result, TrainResult), "the child's result comes back validated, not as strings"
    assert result.steps == 3 and result.resumed_from == 0 and isinstance(result.cache_hit, bool)
    assert result.mlflow_run_id and np.isfinite(result.final_loss)
    adapter = result.adapter_dir
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert any("adapter written" in line for line in lines)
    assert sum("adapter written" in line for line in lines) == 1  # main process only
    assert sum("brandtune.training: adapter:" in line for line in lines) == 2  # but both ranks trained


CORES = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("omp", "world", "expected"),
    [
        ("3", 1, 3),
        ("3", 2, 3),
        (None, 1, CORES),
        (None, 2, max(1, CORES // 2)),
        ("", 1, CORES),
        ("x", 2, max(1, CORES // 2)),
    ],
)
def test_default_threads_follow_omp_num_threads_else_share_the_cores(
    omp: str | None, world: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty ``num_threads``: what OMP_NUM_THREADS says (torch's convention), else the cores shared by the
    processes; a value that is not a number counts as unset."""
    from brandtune.procs import default_threads

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert default_threads(world) == expected


def _holds_every_step(run_id: str, steps: int) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, steps + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "adapter")} >= {
        "adapter/pytorch_lora_weights.safetensors"
    }


@pytest.mark.usefixtures("torch_threads", "acme_dataset")
def test_the_launched_training_process_never_imports_mlflow(tmp_path: Path) -> None:
    """The launcher forwards the run log; the child only writes it."""
    from brandtune.training import launch
    from brandtune.training.__main__ import DEBUG_IMPORTS_ENV

    lines: list[str] = []
    result = launch(quick(tmp_path, max_train_steps=3), on_line=lines.append, env={DEBUG_IMPORTS_ENV: "1"})
    assert [line.rsplit(": ", 1)[-1] for line in lines if "mlflow imported" in line] == ["False"]
    assert result.mlflow_run_id
    _holds_every_step(result.mlflow_run_id, 3)


@pytest.mark.usefixtures("torch_threads", "acme_dataset")
def test_a_training_without_launcher_forwards_through_a_sidecar(tmp_path: Path) -> None:
    """``python -m brandtune.training`` (or plain ``accelerate launch``): the entry point starts a sidecar
    forwarder; the training process still never imports mlflow, and the run holds every step at the end."""
    import json
    import subprocess
    import sys

    from brandtune.training.__main__ import DEBUG_IMPORTS_ENV
    from brandtune.training.result import read_result_file

    cfg = quick(tmp_path, max_train_steps=3)
    config_file, result_file = tmp_path / "train.json", tmp_path / "result.json"
    config_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    cmd = [
        sys.executable,
        "-m",
        "brandtune.training",
        "--config",
        str(config_file),
        "--result-file",
        str(result_file),
    ]
    env = {k: v for k, v in os.environ.items() if k != "BRANDTUNE_FORWARDER"}
    out = subprocess.run(
        cmd, env={**env, DEBUG_IMPORTS_ENV: "1"}, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mlflow imported: False" in out.stderr
    result = read_result_file(result_file, "test")
    _holds_every_step(result.mlflow_run_id, 3)


@pytest.mark.usefixtures("acme_dataset")
def test_a_training_whose_run_cannot_be_created_fails_before_its_first_step(tmp_path: Path) -> None:
    """The launcher opens the MLflow run while the training process starts (its id goes into the adapter's
    provenance and the checkpoints; the process waits for it before its first step): with the server down, the
    launch fails at once with a message that says so, and the training process is stopped, nothing trained."""
    from mlflow_server import free_port

    from brandtune.errors import TrainingError
    from brandtune.settings import Settings
    from brandtune.training import launch

    settings = Settings.from_env().model_copy(update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    lines: list[str] = []
    with pytest.raises(TrainingError, match=r"MLflow run could not be created .*connection refused"):
        launch(quick(tmp_path, max_train_steps=3), settings=settings, on_line=lines.append)
    assert not any("starting from step" in line for line in lines), lines
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "checkpoints").exists()
    launched = str(settings.home / "launch")
    for proc in Path("/proc").iterdir():  # the training process (group) is gone
        try:
            assert launched not in (proc / "cmdline").read_bytes().decode(errors="replace"), proc
        except (NotADirectoryError, FileNotFoundError, ProcessLookupError, PermissionError):
            continue
