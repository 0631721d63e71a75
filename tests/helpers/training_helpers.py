"""Plain helpers of the training tests (tests/training/): a quick training config of the sample brand."""

from __future__ import annotations

from pathlib import Path

from threads import THREADS

from brandtune.training import TrainConfig

QUICK = {
    "brand": "acme",
    "checkpointing_steps": 0,
    "validation_inference_steps": 2,
    "num_threads": THREADS,
    "train_batch_size": 4,
}


def quick(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(**{**QUICK, "output_dir": tmp_path / "run", **overrides})


def kill_after_checkpoint(cfg: TrainConfig, config_file: Path, step: int, timeout: float = 300) -> None:
    """Train ``cfg`` in a child process (``python -m brandtune.training``) and SIGKILL its process group as soon
    as checkpoint ``step`` is complete; the run folder keeps what the killed process left."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    config_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "brandtune.training", "--config", str(config_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = cfg.output_dir / "checkpoints" / f"checkpoint-{step:08d}" / "COMPLETE"
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, f"no checkpoint {step} within {timeout} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cfg.output_dir / "adapter").exists()
