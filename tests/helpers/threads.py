"""How many torch threads a test's training or sampling takes: its pytest-xdist worker's share of the cores.

Two workers on two cores each take one thread: oversubscribed torch threads spin on each other and run several
times slower. Never more than two: the tiny models gain nothing from more.
"""

from __future__ import annotations

import os

#: Workers in this run (pytest-xdist sets the variable in each worker; a plain run is one worker).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
