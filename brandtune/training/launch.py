"""Running training as a child process: ``python -m brandtune.training`` or ``accelerate launch``.

The child runs in its own process group, so a caller (the CLI, a Prefect task) can stop the whole tree - accelerate's
launcher and every worker - on cancel, timeout or Ctrl-C. Its output is streamed line by line to a callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from brandtune.errors import TrainingError
from brandtune.settings import Settings
from brandtune.training.config import TrainConfig

logger = logging.getLogger(__name__)


def build_command(
    config_file: Path, result_file: Path, num_processes: int = 1, accelerate_config: Path | None = None
) -> list[str]:
    """The command line that trains ``config_file`` with ``num_processes`` processes."""
    train = ["-m", "brandtune.training", "--config", str(config_file), "--result-file", str(result_file)]
    if num_processes == 1 and accelerate_config is None:
        return [sys.executable, *train]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    if num_processes > 1 or accelerate_config is None:
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--dynamo_backend", "no"]
        if accelerate_config is None:
            import importlib.util

            cuda = importlib.util.find_spec("torch") is not None and _cuda_count() >= num_processes
            cmd += ["--multi_gpu"] if cuda and num_processes > 1 else ["--cpu"]
            cmd += ["--mixed_precision", "no"]
    return [*cmd, *train]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def kill_tree(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def launch(
    config: TrainConfig,
    *,
    num_processes: int = 1,
    accelerate_config: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    settings: Settings | None = None,
) -> dict[str, str]:
    """Train in a child process and return its result (``run_dir``, ``adapter_dir``, ``mlflow_run_id``, ...).

    Raises:
        TrainingError: the child failed; the message carries its last error line.
    """
    settings = settings or Settings.from_env()
    work = settings.home / "launch"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        config_file, result_file = Path(tmp) / "train_config.json", Path(tmp) / "result.json"
        config_file.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        cmd = build_command(config_file, result_file, num_processes, accelerate_config)
        logger.info("launching: %s", " ".join(cmd))
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            start_new_session=True,
        )
        last_error = ""
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                if " ERROR " in line or "Error:" in line:
                    last_error = line
                (on_line or logger.info)(line)
            proc.wait()
        except BaseException:
            kill_tree(proc)
            raise
        if proc.returncode != 0 or not result_file.is_file():
            detail = last_error.split(": ", 1)[-1] if last_error else f"exit code {proc.returncode}"
            raise TrainingError(f"training of brand {config.brand!r} failed: {detail}")
        return json.loads(result_file.read_text())
