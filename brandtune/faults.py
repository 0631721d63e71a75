"""Fault points for fault-injection tests: a named place where a test can make the process die for real.

``fault_point("registry.after_create")`` does nothing unless the environment variable ``BRANDTUNE_FAULT`` names
that point. Then ``BRANDTUNE_FAULT_ACTION`` says what happens there:

- ``kill`` (the default): the process sends itself SIGKILL, as an OOM killer or a lost node would;
- ``enospc``: ``OSError(ENOSPC)`` is raised, as a full disk would;
- ``hang``: the process sleeps until it is killed from outside.

Names are ``<stage>.<where>``. The tests that use them list them in docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
import signal
import time

FAULT_ENV = "BRANDTUNE_FAULT"
ACTION_ENV = "BRANDTUNE_FAULT_ACTION"


def fault_point(name: str) -> None:
    """Die, fail or hang here when a test asked for it through ``BRANDTUNE_FAULT``; otherwise do nothing."""
    if os.environ.get(FAULT_ENV) != name:
        return
    action = os.environ.get(ACTION_ENV, "kill")
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fault point {name})")
    if action == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
