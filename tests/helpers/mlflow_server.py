"""A real ``mlflow server`` on loopback for tests: start, SIGKILL, restart on the same port and store.

Import from a test module (``from mlflow_server import Server, on_server_env``); conftest puts tests/helpers on
the path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from brandtune.services import server_env
from brandtune.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} not healthy after {limit}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    """An ``mlflow server`` on a sqlite store and artifact folder in tmp, restartable on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log = self.root / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **server_env()},
            )
        wait_healthy(self.uri, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def kill(self) -> None:
        """SIGKILL the server (and its workers): what a crash or an OOM kill does."""
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)


@contextlib.contextmanager
def on_server_env(server: Server) -> Iterator[Settings]:
    """Point MLFLOW_TRACKING_URI (and mlflow's global URI) at the server, then restore."""
    import mlflow

    old = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    mlflow.set_tracking_uri(server.uri)
    try:
        yield Settings.from_env()
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = old
        mlflow.set_tracking_uri(old)
