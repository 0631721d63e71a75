"""Running training as a child process: ``python -m brandtune.training`` or ``accelerate launch``.

The child runs in its own process group, so a caller (the CLI, a Prefect task) can stop the whole tree - accelerate's
launcher and every worker - on cancel, timeout or Ctrl-C. Its output is streamed line by line to a callback.

The launching process decides the run folder and what it continues (:mod:`brandtune.training.rundir`) and holds
the folder's lock (:mod:`brandtune.training.lock`) for the child's whole life, so a second training into the same
folder is refused before anything starts, and exactly one process holds the lock however many workers train.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from brandtune.config import TrainConfig
from brandtune.errors import TrainingError
from brandtune.procs import default_threads, stop_process_group
from brandtune.settings import Settings
from brandtune.training.result import TrainResult, read_result_file

if TYPE_CHECKING:
    from accelerate.commands.config.config_args import ClusterConfig

    from brandtune.forwarder import Forwarder
    from brandtune.training.lock import RunLock
    from brandtune.training.plan import TrainJob
    from brandtune.training.rundir import RunChoice

logger = logging.getLogger(__name__)


class TrainingKilledError(TrainingError):
    """The training process was ended by a signal from outside (not by an error of its own): worth a retry."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def build_command(
    config_file: Path, result_file: Path, num_processes: int = 1, accelerate_config: Path | None = None
) -> list[str]:
    """The command line that trains ``config_file`` with ``num_processes`` processes.

    Several CPU processes (no config and no GPUs, or a config with ``distributed_type: MULTI_CPU`` / ``use_cpu``)
    are started with ``torch.distributed.run``: ``accelerate launch`` starts only one process for multi-CPU unless
    an MPI hostfile is configured. Run that command with ``ACCELERATE_USE_CPU=true`` (see :func:`cpu_world_size`)
    so that each process's Accelerator joins the gloo group. An FSDP config always goes through ``accelerate
    launch``, which hands its ``fsdp_config`` to the processes (and is refused where it cannot run, see
    :func:`cpu_world_size`).
    """
    train = ["-m", "brandtune.training", "--config", str(config_file), "--result-file", str(result_file)]
    cpu_world = cpu_world_size(num_processes, accelerate_config)
    if cpu_world > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cpu_world),
                *train]  # fmt: skip
    if num_processes == 1 and accelerate_config is None:
        return [sys.executable, *train]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    if num_processes > 1 or accelerate_config is None:
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--dynamo_backend", "no"]
        if accelerate_config is None:
            cmd += ["--multi_gpu", "--mixed_precision", "no"]
    return [*cmd, *train]


def cpu_world_size(num_processes: int = 1, accelerate_config: Path | None = None) -> int:
    """How many CPU training processes a launch starts (0 when it does not train on several CPU processes).

    Raises:
        TrainingError: the config cannot be read, asks for multi-node CPU training, or asks for FSDP where it
            cannot run (see :func:`check_fsdp`).
    """
    if accelerate_config is None:
        return num_processes if num_processes > 1 and _cuda_count() < num_processes else 0
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        cfg = load_config_from_file(str(accelerate_config))
    except (OSError, ValueError, TypeError) as exc:
        raise TrainingError(f"accelerate config {accelerate_config} cannot be read: {exc}") from exc
    world = num_processes if num_processes > 1 else getattr(cfg, "num_processes", 1)
    kind = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
    if kind == "FSDP":
        check_fsdp(cfg, world, accelerate_config)
        return 0
    cpu = kind == "MULTI_CPU" or cfg.use_cpu
    if not cpu or world <= 1:
        return 0
    if getattr(cfg, "num_machines", 1) > 1:
        raise TrainingError(
            f"accelerate config {accelerate_config}: multi-node CPU training is not supported by brandtune's "
            "launcher; use one machine (num_machines: 1) or GPUs"
        )
    return world


def check_fsdp(cfg: ClusterConfig, world: int, path: Path) -> None:
    """Refuse an FSDP config that cannot train here, before any process starts.

    brandtune trains FSDP2 only (``fsdp_version: 2``: every parameter a ``DTensor`` shard, which the LoRA
    weights, their optimizer state and the saved adapter are gathered from), and on GPUs only: accelerate 1.15
    builds its FSDP state only for GPU-like processes. Started on CPU processes (``use_cpu``, or no GPU for a
    process) it silently trains DDP instead, or, without ``ACCELERATE_USE_CPU``, as many separate one-process
    trainings (tests/training/test_fsdp.py checks that this is still so).

    Args:
        cfg: The config as accelerate reads it (``load_config_from_file``).
        world: Training processes in all.
        path: The config file, for the message.

    Raises:
        TrainingError: not FSDP2, ``use_cpu``, or fewer GPUs visible than processes on this machine.
    """
    import accelerate

    version = str((getattr(cfg, "fsdp_config", None) or {}).get("fsdp_version", 1))
    if version != "2":
        raise TrainingError(
            f"accelerate config {path}: fsdp_version {version}: brandtune trains FSDP2 only; set "
            "fsdp_config.fsdp_version: 2 (see configs/accelerate/fsdp.yaml)"
        )
    if getattr(cfg, "use_cpu", False):
        raise TrainingError(
            f"accelerate config {path}: FSDP with use_cpu: true does not shard: accelerate "
            f"{accelerate.__version__} runs FSDP only on GPUs and trains CPU processes as DDP; to train on CPUs "
            "use configs/accelerate/cpu_2proc.yaml"
        )
    local = max(1, world // max(1, getattr(cfg, "num_machines", 1) or 1))
    if (gpus := _cuda_count()) < local:
        raise TrainingError(
            f"accelerate config {path}: FSDP needs a GPU per process: {local} processes on this machine but "
            f"{gpus} GPU(s) visible; lower num_processes, or train on CPUs with configs/accelerate/cpu_2proc.yaml"
        )


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


#: A tqdm bar's counter and timer, e.g. ``57/300 [02:56<07:24``: whatever its unit (``step/s`` or ``s/step``).
_PROGRESS_BAR = re.compile(r"\d+/\d+ \[[\d:]+<")


class ProgressLines:
    """Pass a child's output on line by line, progress-bar refreshes at most one every ``every`` seconds.

    The child's tqdm bars redraw with ``\r``, which a text pipe splits into one line per refresh; only the last
    state of each is kept, throttled, and a finished bar (100%) always goes through.
    """

    def __init__(self, sink: Callable[[str], None], every: float = 5.0) -> None:
        self.sink, self.every, self.last_bar = sink, every, -float("inf")

    def __call__(self, line: str) -> None:
        text = line.rsplit("\r", 1)[-1].strip()
        if not text:
            return
        if _PROGRESS_BAR.search(text) and "100%" not in text:
            now = time.monotonic()
            if now - self.last_bar < self.every:
                return
            self.last_bar = now
        self.sink(text)


def launch(
    config: TrainConfig,
    *,
    num_processes: int = 1,
    accelerate_config: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    settings: Settings | None = None,
    job: TrainJob | None = None,
) -> TrainResult:
    """Train in a child process and return its result, validated (the child writes it as JSON).

    Args:
        config: The training. ``invocation_id`` names who asks (a Prefect flow run: its retries continue its
            checkpoints); empty, a fresh id is made and nothing earlier is continued unless ``resume`` asks.
        num_processes: Training processes (DDP when more than one).
        accelerate_config: An accelerate config file (multi-GPU, FSDP).
        on_line: Gets each line the child prints (default: this module's logger).
        env: Extra environment for the child.
        settings: Where brandtune keeps its state.
        job: ``config`` already resolved by :func:`~brandtune.training.plan.resolve_job` (saves resolving twice).

    Raises:
        RunDirLockedError: another training holds the run folder (named, with its holder).
        TrainingError: ``accelerate_config`` cannot run here (unreadable; FSDP without a GPU per process, see
            :func:`check_fsdp`: refused before anything is written), the child failed (the message carries its
            last error line) or wrote no valid result, or the finished training a retry gets back has no valid
            ``result.json``.
    """
    import dataclasses

    from brandtune.training.lock import run_lock
    from brandtune.training.plan import resolve_job
    from brandtune.training.rundir import choose_run_dir, new_invocation_id, read_result

    cpu_world_size(num_processes, accelerate_config)  # a launch that cannot run is refused before any claim
    settings = settings or Settings.from_env()
    job = job or resolve_job(config, settings)
    if config.invocation_id is None:
        config = config.model_copy(update={"invocation_id": new_invocation_id()})
        job = dataclasses.replace(
            job, config=job.config.model_copy(update={"invocation_id": config.invocation_id})
        )
    out = job.config.output_dir
    # an explicit output_dir is locked before its contents are read: a second training there is refused at once
    with run_lock(Path(out), config.invocation_id) if out is not None else contextlib.nullcontext() as held:
        choice = choose_run_dir(job, settings)
        if choice.finished:
            (on_line or logger.info)(choice.describe())
            _send_leftovers(choice.run_dir, settings)
            return read_result(choice.run_dir)
        own = run_lock(choice.run_dir, config.invocation_id) if held is None else contextlib.nullcontext(held)
        with own as lock:
            return _claimed(
                choice, job, config, num_processes, accelerate_config, on_line, env, settings, lock
            )


def _send_leftovers(run_dir: Path, settings: Settings) -> None:
    """A retry of a finished training: send what an outage kept in its run log (the registration needs it)."""
    from brandtune.forwarder import send
    from brandtune.runlog import pending

    if pending(run_dir):
        send(run_dir, settings.tracking_uri)


def _claimed(
    choice: RunChoice,
    job: TrainJob,
    config: TrainConfig,
    num_processes: int,
    accelerate_config: Path | None,
    on_line: Callable[[str], None] | None,
    env: dict[str, str] | None,
    settings: Settings,
    lock: RunLock,
) -> TrainResult:
    """Claim the locked run folder and train in it in a child process."""
    from brandtune.forwarder import MODE_ENV, RUN_ID_FILE
    from brandtune.runlog import log_dir
    from brandtune.training.checkpoint import check_world
    from brandtune.training.lock import TOKEN_ENV
    from brandtune.training.rundir import CHOICE_ENV, claim

    if choice.resume_from is not None and accelerate_config is None:  # (with a config, each child checks)
        check_world(choice.resume_from, num_processes)  # refused before any process starts
    claim(choice, job)
    # the child waits for this attempt's run id, not an earlier attempt's
    (log_dir(choice.run_dir) / RUN_ID_FILE).unlink(missing_ok=True)
    # the child trains exactly what was resolved here: this dataset, this folder
    child = config.model_copy(update={"output_dir": choice.run_dir, "dataset": job.fingerprint})
    child_env = {**(env or {}), TOKEN_ENV: lock.token, CHOICE_ENV: choice.to_json(), MODE_ENV: "launcher"}
    return _run_child(
        child,
        num_processes,
        accelerate_config,
        on_line,
        child_env,
        settings,
        lambda: _open_tracking(choice, job, settings),
    )


def _open_tracking(choice: RunChoice, job: TrainJob, settings: Settings) -> Forwarder:
    """Open the training's MLflow run (continued when resuming) and start forwarding its run log from this
    process; the training process, started just before, reads the run id from the run folder when it needs it
    (:func:`~brandtune.forwarder.launcher_run_id`) and never talks to MLflow.

    Raises:
        TrainingError: the run cannot be created (the tracking server is down): the caller stops the training
            process before its first step.
    """
    from brandtune.forwarder import Forwarder, open_training_run
    from brandtune.training.rundir import read_run_file, write_run_file

    resume_run_id = None
    if choice.resume_from is not None:
        resume_run_id = json.loads((choice.resume_from / "state.json").read_text()).get("mlflow_run_id")
    abandoned = read_run_file(choice.run_dir).get("mlflow_run_id")
    name = f"train-{job.run_hash[:8]}"
    run_id = open_training_run(
        choice.run_dir, job.brand.name, name, resume_run_id, settings.tracking_uri, abandoned
    )
    write_run_file(choice.run_dir, mlflow_run_id=run_id)
    return Forwarder(choice.run_dir, settings.tracking_uri).start()


def _run_child(
    config: TrainConfig,
    num_processes: int,
    accelerate_config: Path | None,
    on_line: Callable[[str], None] | None,
    env: dict[str, str],
    settings: Settings,
    open_tracking: Callable[[], Forwarder],
) -> TrainResult:
    """Start the training process, then open the MLflow run while it imports and loads (``open_tracking``: the
    process waits for the run id only before its first step; a run that cannot be opened stops it), stream its
    output, and return its result. The forwarder is finished at the end, bounded: what MLflow cannot take now
    stays in the run log, with a message."""
    work = settings.home / "launch"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        config_file, result_file = Path(tmp) / "train_config.json", Path(tmp) / "result.json"
        config_file.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        cmd = build_command(config_file, result_file, num_processes, accelerate_config)
        logger.info("launching: %s", " ".join(cmd))
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        cpu_world = cpu_world_size(num_processes, accelerate_config)
        if cpu_world > 1:
            child_env["ACCELERATE_USE_CPU"] = "true"  # the workers' Accelerator then uses gloo on the CPU
            # torchrun would set 1 thread a process where this is unset; each takes its share of the cores
            child_env.setdefault("OMP_NUM_THREADS", str(default_threads(cpu_world)))
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            start_new_session=True,
        )
        last_error = ""
        forwarder: Forwarder | None = None
        try:
            forwarder = open_tracking()
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                # brandtune's own logged error wins over a launcher's traceback (torchrun's ChildFailedError)
                if " ERROR " in line or ("Error:" in line and " ERROR " not in last_error):
                    last_error = line
                (on_line or logger.info)(line)
            proc.wait()
        except BaseException:
            stop_process_group(proc, name="training")
            raise
        finally:
            if forwarder is not None:
                forwarder.finish()
        if proc.returncode < 0:  # a signal from outside: the OOM killer, a preempted node, a kill
            raise TrainingKilledError(
                f"training of brand {config.brand!r} was killed by signal {-proc.returncode} "
                f"({_signal_name(-proc.returncode)}); a retry of the same invocation continues its last "
                "checkpoint"
            )
        if proc.returncode != 0:
            # (a launcher's "ChildFailedError:" line carries its detail on the next lines: then the exit code)
            detail = last_error.split(": ", 1)[-1].strip() or f"exit code {proc.returncode}"
            raise TrainingError(f"training of brand {config.brand!r} failed: {detail}")
        return read_result_file(result_file, f"training of brand {config.brand!r}")
