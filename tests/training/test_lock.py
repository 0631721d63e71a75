"""The run-folder lock: one training at a time per folder, a live holder named, a stale lock taken over once."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import quick

from brandtune.training import train
from brandtune.training.lock import (
    LOCK_FILE,
    TOKEN_ENV,
    RunDirLockedError,
    acquire,
    held_for_me,
    read_lock,
    run_lock,
)


@pytest.fixture
def sleeper() -> subprocess.Popen:
    """A live process on this host (to stand for another training)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_lock(run_dir: Path, **holder: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "host": socket.gethostname(),
        "started": "2026-01-01T00:00:00+00:00",
        "started_ts": time.time(),
        "invocation_id": "other",
        "token": "t0",
        **holder,
    }
    (run_dir / LOCK_FILE).write_text(json.dumps(info))
    return run_dir / LOCK_FILE


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with run_lock(tmp_path, "inv-1") as lock:
        holder = read_lock(lock.path)
        assert holder is not None
        assert holder["pid"] == os.getpid() and holder["invocation_id"] == "inv-1"
        with pytest.raises(RunDirLockedError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            acquire(tmp_path, "inv-2")  # even this process does not take a folder twice
    assert not (tmp_path / LOCK_FILE).exists()
    acquire(tmp_path).release()


def test_live_holder_is_refused_at_once_and_named(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    path = _write_lock(tmp_path, pid=sleeper.pid, started_ts=time.time())
    before = path.read_text()
    with pytest.raises(RunDirLockedError) as info:
        acquire(tmp_path)
    message = str(info.value)
    assert f"pid {sleeper.pid}" in message and "invocation other" in message and str(path) in message
    assert path.read_text() == before, "a refused training leaves the holder's lock alone"


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=_dead_pid(), host="some-other-host")
    with pytest.raises(RunDirLockedError, match="some-other-host"):
        acquire(tmp_path)


def test_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = _dead_pid()
    _write_lock(tmp_path, pid=dead)
    with caplog.at_level(logging.WARNING, logger="brandtune.training.lock"):
        lock = acquire(tmp_path, "mine")
    assert read_lock(lock.path)["invocation_id"] == "mine"
    assert any("stale lock" in r.message and f"pid {dead}" in r.message for r in caplog.records)
    lock.release()


def test_reused_pid_counts_as_stale(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    """A live process that started after the lock was taken is not its holder (the pid was reused)."""
    _write_lock(tmp_path, pid=sleeper.pid, started_ts=time.time() - 3600)
    acquire(tmp_path).release()


def _race(run_dir: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait()
    try:
        acquire(Path(run_dir), f"racer-{os.getpid()}")
    except RunDirLockedError:
        results.put("refused")
    else:
        results.put("won")
        time.sleep(1.0)  # keep holding while the others try


def test_racing_takeovers_of_one_stale_lock_leave_one_holder(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=_dead_pid())
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["refused", "refused", "refused", "won"]


def test_the_launchers_lock_is_recognised_by_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_lock(tmp_path) as lock:
        assert not held_for_me(tmp_path)
        monkeypatch.setenv(TOKEN_ENV, lock.token)
        assert held_for_me(tmp_path)
        monkeypatch.setenv(TOKEN_ENV, "someone-else")
        assert not held_for_me(tmp_path)


@pytest.mark.usefixtures("torch_threads", "acme_dataset")
def test_a_training_into_a_folder_in_use_is_refused_at_once(tmp_path: Path) -> None:
    from brandtune.training.launch import launch
    from brandtune.training.lock import LOCK_FILE, RunDirLockedError, acquire

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from brandtune.training.lock import "
         "acquire; acquire(Path(sys.argv[1]), 'the-holder'); print('held', flush=True); time.sleep(120)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLockedError, match=rf"pid {holder.pid} .*invocation the-holder"):
            train(quick(tmp_path, max_train_steps=1))
        lines: list[str] = []
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid}"):
            launch(quick(tmp_path, max_train_steps=1), on_line=lines.append)
        assert not lines, "refused before a child process started"
        assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists()  # killed: its lock is stale now, and the next one takes it
    acquire(tmp_path / "run").release()
