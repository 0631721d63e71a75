"""A phase clock for a benchmark child: every moment of the process's life goes to exactly one named phase.

``PhaseClock.wrap(module, "name", "phase")`` makes each call of ``module.name`` time its span as ``phase``; calls
nest (time spent in an inner phase is not counted again in the outer one). ``install_import_timer`` sends the time
of every import that is not nested in another import to the phase ``"imports"``, wherever it happens (at start-up
or inside a function of the code under test: lazy imports are paid where they are first used), so the phases are
net of imports and, with the process's start-up and exit, add up to its wall time. Nothing the timed code does is
changed: the wrappers call the original and return what it returns.
"""

from __future__ import annotations

import builtins
import importlib
import time
from collections.abc import Callable
from typing import Any

IMPORTS = "imports"


class PhaseClock:
    """Exclusive wall time per phase: the time between two transitions goes to the phase on top of the stack."""

    def __init__(self, first: str) -> None:
        self.totals: dict[str, float] = {}
        self.stack: list[str] = [first]
        self.marks: dict[str, float] = {}  # time.time() of named moments (cross-process: the parent compares)
        self._last = time.perf_counter()

    def _advance(self) -> None:
        now = time.perf_counter()
        top = self.stack[-1]
        self.totals[top] = self.totals.get(top, 0.0) + now - self._last
        self._last = now

    def push(self, phase: str) -> None:
        self._advance()
        self.stack.append(phase)

    def pop(self) -> None:
        self._advance()
        self.stack.pop()

    def switch(self, phase: str) -> None:
        """Replace the bottom phase (the one that takes whatever no wrapped call claims)."""
        self._advance()
        self.stack[0] = phase

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def snapshot(self) -> dict[str, float]:
        self._advance()
        return dict(self.totals)

    def wrap(self, module: Any, name: str, phase: str, after: Callable[[], None] | None = None) -> None:
        """Time every call of ``module.name`` as ``phase``; ``after`` runs when a call returns (not timed)."""
        inner = getattr(module, name)
        clock = self

        def wrapper(*a: Any, **kw: Any) -> Any:
            clock.push(phase)
            try:
                return inner(*a, **kw)
            finally:
                clock.pop()
                if after is not None:
                    after()

        wrapper.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(module, name, wrapper)


def install_import_timer(clock: PhaseClock) -> None:
    """Count the outermost ``import`` statements and ``importlib.import_module`` calls as :data:`IMPORTS`."""
    real_import, real_import_module = builtins.__import__, importlib.import_module
    depth = [0]

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            if depth[0]:
                return fn(*a, **kw)
            depth[0] += 1
            clock.push(IMPORTS)
            try:
                return fn(*a, **kw)
            finally:
                clock.pop()
                depth[0] -= 1

        return call

    builtins.__import__ = timed(real_import)
    importlib.import_module = timed(real_import_module)
