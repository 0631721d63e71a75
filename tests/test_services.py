"""brandtune.services: a service that cannot be stopped is an error naming its pid and what to do, after the others
were stopped; it never replaces the error that ended the services' block."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brandtune import services
from brandtune.services import Service, ServiceError, ServiceStack


def _service(name: str, tmp_path: Path) -> Service:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    return Service(name, proc, tmp_path / f"{name}.log")


@pytest.fixture
def stubborn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two real services; stopping 'mlflow-server' fails as it would without permission to signal it."""
    real_stop = services.stop
    prefect, mlflow = _service("prefect-server", tmp_path), _service("mlflow-server", tmp_path)

    def stop(service: Service, grace: float = 10.0) -> None:
        if service is mlflow:
            raise PermissionError(1, "Operation not permitted")
        real_stop(service, grace)

    monkeypatch.setattr(services, "stop", stop)
    yield prefect, mlflow
    for svc in (prefect, mlflow):
        svc.proc.kill()
        svc.proc.wait()


def test_a_service_that_cannot_be_stopped_is_an_error_after_the_others_stop(stubborn) -> None:
    prefect, mlflow = stubborn
    stack = ServiceStack()
    stack.add(prefect)
    stack.add(mlflow)  # stopped first
    with pytest.raises(ServiceError) as info:
        stack.stop_all()
    message = str(info.value)
    assert "\n" not in message
    assert f"could not stop mlflow-server (pid {mlflow.pid})" in message
    assert f"kill -KILL -- -{mlflow.pid}" in message
    assert prefect.proc.poll() is not None, "the other service was still stopped"
    assert mlflow.proc.poll() is None


def test_the_blocks_own_error_is_not_replaced_by_a_stop_failure(
    stubborn, caplog: pytest.LogCaptureFixture
) -> None:
    prefect, mlflow = stubborn
    with pytest.raises(KeyError, match="the body's error"), ServiceStack() as stack:
        stack.add(prefect)
        stack.add(mlflow)
        raise KeyError("the body's error")
    assert any(f"pid {mlflow.pid}" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
