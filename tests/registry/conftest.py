"""Fixtures of the registry tests: a real `mlflow server` on loopback per module that asks for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlflow_server import Server, on_server_env

from brandtune.settings import Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An `mlflow server` on a sqlite store in tmp, restartable (and killable) on the same port."""
    srv = Server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def on_server(server: Server) -> Iterator[Settings]:
    """MLFLOW_TRACKING_URI (and mlflow's global URI) on the server for the module, then restored."""
    with on_server_env(server) as settings:
        yield settings
