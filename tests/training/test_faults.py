"""Fault injection into real trainings: bad checkpoints, a full disk during a checkpoint write, a resume with another
number of processes, two trainings into one run folder, a SIGKILLed holder of the run-folder lock.

Each fault is made for real: a training process SIGKILLed by its process group, ``OSError(ENOSPC)`` raised inside
the checkpoint write by the fault point ``train.checkpoint_write`` (:mod:`brandtune.faults`), a training that hangs
in the middle of that write while it holds the lock. The tiny built-in model trains a few steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import kill_after_checkpoint, quick

from brandtune.errors import TrainingError
from brandtune.faults import ACTION_ENV, FAULT_ENV
from brandtune.training import TrainConfig, train
from brandtune.training import checkpoint as ckpt
from brandtune.training.lock import LOCK_FILE, read_lock

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

WRITE_POINT = "train.checkpoint_write"


def _name(step: int) -> str:
    return f"{ckpt.PREFIX}{step:08d}"


def _bad_copies(root: Path, good: Path) -> dict[str, str]:
    """Broken checkpoints newer than ``good`` (copies of it), each with the reason resume must give for it."""
    bad = {}
    flipped = root / _name(5)  # a valid marker over a file with one bit flipped
    shutil.copytree(good, flipped)
    marker = json.loads((good / ckpt.MARKER).read_text())
    (flipped / ckpt.MARKER).write_text(json.dumps({**marker, "step": 5}))
    data = bytearray((flipped / "trainable.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x10
    (flipped / "trainable.safetensors").write_bytes(bytes(data))
    bad[flipped.name] = "does not match its recorded sha256"
    for step, text, reason in (
        (6, "", "unreadable COMPLETE marker"),  # an empty marker file
        (7, json.dumps({"step": 7, "files": {}}), "does not cover"),  # a marker that lists no file
        (9, json.dumps(["step", 9]), "not a marker of this format"),  # a marker that is not an object
    ):
        folder = root / _name(step)
        shutil.copytree(good, folder)
        (folder / ckpt.MARKER).write_text(text)
        bad[folder.name] = reason
    shutil.copytree(good, root / "checkpoint-foo")  # complete, but not a step's name: never loaded
    bad["checkpoint-foo"] = "not a checkpoint folder"
    return bad


def test_checkpoint_faults_resume_from_the_newest_good_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after checkpoint 4; a resume whose checkpoint-8 write hits ENOSPC stops with one line and leaves
    checkpoint 4 intact and nothing half-written; a resume with two processes is refused; bit-flipped, empty,
    list-less, non-object and misnamed checkpoints are skipped by name; the resume continues from step 4."""
    from brandtune.training.launch import launch

    cfg = quick(tmp_path, max_train_steps=12, checkpointing_steps=4)
    kill_after_checkpoint(cfg, tmp_path / "cfg.json", step=4)
    root = cfg.output_dir / "checkpoints"
    good = root / _name(4)
    resume = cfg.model_copy(update={"resume": "latest"})

    monkeypatch.setenv(FAULT_ENV, WRITE_POINT)
    monkeypatch.setenv(ACTION_ENV, "enospc")
    with pytest.raises(TrainingError) as full:
        train(resume)
    monkeypatch.delenv(FAULT_ENV)
    message = str(full.value)
    assert "\n" not in message
    assert f"checkpoint 8 could not be written to {root}" in message and "free disk space" in message
    assert _name(4) in message, "the message names the checkpoint that is kept"
    assert sorted(p.name for p in root.iterdir()) == [_name(4)], "no half checkpoint, no temporary folder"
    assert ckpt.verify(good) is None
    assert not (cfg.output_dir / LOCK_FILE).exists(), "the failed training released its lock"

    bad = _bad_copies(root, good)
    lines: list[str] = []
    with pytest.raises(TrainingError) as world:
        launch(resume, num_processes=2, on_line=lines.append)
    assert "\n" not in str(world.value)
    assert f"checkpoint {good} was written by 1 training process(es) but this resume runs 2" in str(
        world.value
    )
    assert not lines, "refused before any training process started"
    assert (root / _name(4) / ckpt.MARKER).is_file() and not (cfg.output_dir / LOCK_FILE).exists()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="brandtune.training"):
        result = train(resume)
    assert result.resumed_from == 4 and result.steps == 12
    assert (result.adapter_dir / "pytorch_lora_weights.safetensors").is_file()
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    for name, reason in bad.items():
        assert any(name in line and reason in line for line in skipped), (name, reason, skipped)


def _start(cfg: TrainConfig, config_file: Path, **env: str) -> subprocess.Popen:
    config_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    return subprocess.Popen(
        [sys.executable, "-m", "brandtune.training", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )


def test_a_second_training_into_a_run_folder_is_refused_and_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Training A hangs in the middle of its first checkpoint write, holding the folder. Training B into the same
    folder (another process, same config) exits with the lock message naming A while A still runs, and before it
    touched the folder. A is SIGKILLed; the next training takes its stale lock over and trains to the end."""
    cfg = quick(tmp_path, max_train_steps=2, checkpointing_steps=1)
    run = cfg.output_dir
    holder = _start(cfg, tmp_path / "a.json", **{FAULT_ENV: WRITE_POINT, ACTION_ENV: "hang"})
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / f".tmp-{_name(1)}").exists():
            assert holder.poll() is None, holder.stdout.read() if holder.stdout else ""
            assert time.monotonic() < deadline, "training A never reached its first checkpoint write"
            time.sleep(0.1)
        lock_before = (run / LOCK_FILE).read_text()
        run_file = (run / "run.json").read_text()
        assert read_lock(run / LOCK_FILE)["pid"] == holder.pid

        second = _start(cfg, tmp_path / "b.json")
        out, _ = second.communicate(timeout=300)
        assert holder.poll() is None, "B was refused while A was still training"
        assert second.returncode == 2, out
        refusal = [line for line in out.splitlines() if " ERROR " in line]
        assert len(refusal) == 1 and f"is in use by another training: pid {holder.pid}" in refusal[0], out
        assert "starting from step 0" not in out and "continuing from" not in out, "B never chose the folder"
        assert (run / LOCK_FILE).read_text() == lock_before and (run / "run.json").read_text() == run_file
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

    with caplog.at_level(logging.WARNING, logger="brandtune.training.lock"):
        result = train(cfg)
    assert any(
        "stale lock" in r.getMessage() and f"pid {holder.pid}" in r.getMessage() for r in caplog.records
    )
    assert result.steps == 2 and (result.adapter_dir / "pytorch_lora_weights.safetensors").is_file()
    assert not list((run / "checkpoints").glob(".tmp-*")), "the killed holder's half checkpoint is gone"
    assert not (run / LOCK_FILE).exists()


def test_doctor_finds_and_removes_stale_run_locks(brandtune_home: Path) -> None:
    """The doctor's lock check reports a lock whose holder was SIGKILLed (and only that one) and ``--fix`` removes it."""
    from brandtune.doctor import CHECKS
    from brandtune.settings import Settings
    from brandtune.training.lock import check_locks

    assert "brandtune.training.lock:check_locks" in CHECKS

    settings = Settings.from_env()
    stale_dir, live_dir = (
        settings.home / "runs" / "acme" / "stale-1",
        settings.home / "runs" / "acme" / "live-1",
    )
    code = (
        "import sys, time; from pathlib import Path; from brandtune.training.lock import acquire; "
        "acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"
    )
    dead = subprocess.Popen([sys.executable, "-c", code, str(stale_dir)], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", code, str(live_dir)], stdout=subprocess.PIPE, text=True)
    try:
        for proc in (dead, live):
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        found = check_locks(settings)
        assert [f.subject for f in found] == [str(stale_dir / LOCK_FILE)]
        assert f"pid {dead.pid}" in found[0].problem and not found[0].fixed
        assert (stale_dir / LOCK_FILE).exists(), "without --fix nothing is removed"
        fixed = check_locks(settings, brand="acme", fix=True)
        assert [f.fixed for f in fixed] == [True]
        assert not (stale_dir / LOCK_FILE).exists() and (live_dir / LOCK_FILE).exists()
        assert check_locks(settings) == []
    finally:
        live.kill()
        live.wait()
        shutil.rmtree(settings.home / "runs" / "acme" / "live-1", ignore_errors=True)


def test_a_tracker_that_cannot_finish_does_not_mask_the_training_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLflow server is gone when a failed training ends its run: the training's error is what is raised, and
    the failure to mark the run FAILED is logged (what ``train`` does in its ``finally``)."""
    from brandtune.services import free_port
    from brandtune.tracking import RunTracker, finish_quietly

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tracker = RunTracker("0" * 32, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    tracker.log_metrics({"loss": float("nan")}, step=1)
    nan = TrainingError("loss became nan at step 1; last good checkpoint: none")
    with caplog.at_level(logging.ERROR, logger="brandtune.tracking"), pytest.raises(TrainingError) as raised:
        try:
            raise nan
        except TrainingError:
            finish_quietly(tracker, "FAILED")
            raise
    assert raised.value is nan
    assert any(f"could not mark MLflow run {'0' * 32} FAILED" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match=r"(?i)connection"):
        tracker.finish("FAILED")  # (the failure finish_quietly logged is real)


def test_each_training_process_refuses_a_checkpoint_of_another_world_size(tmp_path: Path) -> None:
    """What every process checks (under an accelerate config the launcher cannot count the processes): the
    world size recorded in the checkpoint; a checkpoint from before it was recorded is accepted."""
    import torch

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight])

    def write(step: int, state: dict) -> Path:
        return ckpt.write_checkpoint(
            tmp_path,
            step,
            {"0/w": weight.detach()},
            optimizer.state_dict(),
            {},
            state,
            {0: ckpt.rng_state()},
            5,
        )

    two = write(1, {"world_size": 2})
    ckpt.check_world(two, 2)
    with pytest.raises(TrainingError, match=r"written by 2 training process\(es\) but this resume runs 1"):
        ckpt.check_world(two, 1)
    ckpt.check_world(write(2, {}), 3)
