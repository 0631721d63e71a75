"""Fixtures of the flow tests: one Prefect test harness for the session, an MLflow client per module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness(brandtune_home: Path) -> None:
    """One temporary Prefect API for the session (PREFECT_HOME is the session's, set by conftest)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.5"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def mlflow_client(brandtune_home: Path) -> Any:
    from brandtune.registry._client import client

    return client()
