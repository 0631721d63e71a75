"""Child processes: how many threads one takes, and stopping those that run in their own process group
(``start_new_session=True``).

Training children, the MLflow and Prefect servers of ``brandtune ui`` and ``brandtune mlflow-ui`` all stop the same
way: SIGTERM to the whole group, a grace period, then SIGKILL to what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

logger = logging.getLogger(__name__)


def default_threads(world: int) -> int:
    """torch threads of one training process when ``num_threads`` is empty: ``OMP_NUM_THREADS`` where it is set
    (torch's own convention), else the machine's cores shared by the ``world`` processes."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, (os.cpu_count() or 1) // world)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; a group that is gone (or not ours to signal) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0, name: str = "child process") -> bool:
    """SIGTERM ``proc``'s process group, wait up to ``grace_s`` seconds, then SIGKILL the group.

    ``proc`` must lead its own group (started with ``start_new_session=True``). A process that has already exited
    is only reaped.

    Args:
        proc: The group leader.
        grace_s: Seconds it gets to exit after SIGTERM.
        name: What to call it in the warning logged when it has to be killed.

    Returns:
        True when the group had to be SIGKILLed.
    """
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        return False
    except subprocess.TimeoutExpired:
        logger.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", name, proc.pid, grace_s)
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
