"""The forwarder as a process of its own: ``python -m brandtune.sidecar RUN_DIR [--follow]``.

The training entry point starts it (:func:`start_sidecar`) when no launching brandtune process forwards the run
log (``python -m brandtune.training``, plain ``accelerate launch``): it opens the MLflow run, then follows the log
until the training's end is sent, or, once the training process is gone, sends what is left (bounded) and exits.
Run by hand without ``--follow`` it sends what an outage kept in a run folder's log (as ``brandtune doctor --fix``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from brandtune.forwarder import RUN_ID_FILE, Forwarder, open_run, wait_limit
from brandtune.runlog import log_dir

logger = logging.getLogger(__name__)


def start_sidecar(
    run_dir: Path, brand: str, run_name: str, resume_run_id: str | None, abandoned: str | None = None
) -> Sidecar:
    """Start ``python -m brandtune.sidecar RUN_DIR --follow`` for a training that no launcher forwards: it
    opens the MLflow run, then follows the log until the training's end event is sent."""
    import subprocess

    cmd = [sys.executable, "-m", "brandtune.sidecar", str(run_dir), "--follow", "--parent", str(os.getpid()),
           "--brand", brand, "--run-name", run_name]  # fmt: skip
    if resume_run_id:
        cmd += ["--resume-run-id", resume_run_id]
    if abandoned:
        cmd += ["--abandoned", abandoned]
    (log_dir(run_dir) / RUN_ID_FILE).unlink(missing_ok=True)
    log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    }
    return Sidecar(subprocess.Popen(cmd, env=env, start_new_session=True), run_dir)


class Sidecar:
    """A sidecar forwarder process (:func:`start_sidecar`) as the training sees it."""

    def __init__(self, proc: Any, run_dir: Path) -> None:
        self.proc, self.run_dir = proc, Path(run_dir)

    def run_id(self, limit: float) -> str:
        """The MLflow run the sidecar opened, once it has (at most ``limit`` seconds).

        Raises:
            TrainingError: the sidecar could not open the run (the tracking server is down, say) or took too long.
        """
        from brandtune.errors import TrainingError

        path, deadline = log_dir(self.run_dir) / RUN_ID_FILE, time.monotonic() + limit
        while not path.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                if self.proc.poll() is None:
                    self.proc.kill()
                raise TrainingError(
                    f"the training's MLflow run could not be created (forwarder exit {self.proc.poll()}, see its "
                    "message above): the tracking server is unreachable (connection refused); start it or point "
                    "MLFLOW_TRACKING_URI at one, then train again"
                )
            time.sleep(0.05)
        return path.read_text().strip()

    def finish(self, wait_s: float | None = None) -> bool:
        """Wait (at most ``wait_s``) for the sidecar to send the rest; if it cannot, it stays and keeps trying."""
        import subprocess

        wait_s = wait_limit() if wait_s is None else wait_s
        try:
            return self.proc.wait(timeout=wait_s) == 0
        except subprocess.TimeoutExpired:
            logger.warning(
                "MLflow still unreachable after %.0f s: the forwarder (pid %d) keeps trying; the run log stays in "
                "%s (send it later with `python -m brandtune.sidecar %s` or `brandtune doctor --fix`)",
                wait_s, self.proc.pid, log_dir(self.run_dir), self.run_dir,
            )  # fmt: skip
            return False


def _follow(forwarder: Forwarder, parent: int | None) -> bool:
    """Follow the log until its last event is an ``end`` MLflow holds, or the parent died and the rest cannot be
    sent within the wait limit."""
    while True:
        delay = forwarder.step()
        if forwarder.down_since is None and forwarder.last_kind == "end" and not forwarder.pending():
            return True
        if parent is not None and not _alive(parent):
            return forwarder.finish()
        time.sleep(delay)


def _alive(pid: int) -> bool:
    """Whether the training process that started this sidecar still runs (once it is gone, this process is
    handed to another parent; a zombie left unreaped counts as gone)."""
    return os.getppid() == pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brandtune.sidecar", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="The training's run folder (holds runlog/).")
    parser.add_argument(
        "--follow", action="store_true", help="Follow the log until the training's end is sent."
    )
    parser.add_argument(
        "--parent", type=int, default=None, help="The training process (stop following if it dies)."
    )
    parser.add_argument("--brand", default=None, help="Open the MLflow run first (with --run-name).")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--resume-run-id", default=None)
    parser.add_argument(
        "--abandoned", default=None, help="An earlier attempt's run to mark KILLED if RUNNING."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from brandtune.settings import Settings

    uri = Settings.from_env().tracking_uri
    if args.brand:
        try:
            open_run(
                args.run_dir, args.brand, args.run_name or "train", args.resume_run_id, uri, args.abandoned
            )
        except Exception as exc:
            logger.error("could not open the MLflow run at %s: %s: %s", uri, type(exc).__name__, exc)
            return 3
    forwarder = Forwarder(args.run_dir, uri)
    done = _follow(forwarder, args.parent) if args.follow else forwarder.finish()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
