"""The shared-host auth option (``brandtune ui --auth``) against REAL servers on loopback: a real ``mlflow server
--app-name basic-auth`` and a real ``prefect server`` with ``PREFECT_SERVER_API_AUTH_STRING``. A request without
credentials is refused (401), one with them succeeds, and the clients brandtune starts (MLflow's client, the
Prefect CLI) authenticate from the environment alone."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from brandtune import services
from brandtune.errors import ConfigError
from brandtune.settings import UiAuth

PASSWORD = "correct horse battery staple"
AUTH = UiAuth(username="brand-admin", password=SecretStr(PASSWORD))


@dataclass
class Stack:
    home: Path
    mlflow: services.Service
    prefect: services.Service
    prefect_home: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both servers with auth on, started together (MLflow takes 12-20 s, Prefect 5-11 s)."""
    home = tmp_path_factory.mktemp("auth_home")
    patch = pytest.MonkeyPatch()
    patch.setenv("BRANDTUNE_HOME", str(home))
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
        patch.delenv(name, raising=False)
    logs = home / "logs"
    with services.ServiceStack() as running:
        try:
            mlflow = running.add(services.mlflow_server(services.free_port(), logs, auth=AUTH))
            prefect = running.add(
                services.prefect_server(services.free_port(), logs, home / "prefect", auth=AUTH)
            )
            services.wait_http(prefect, f"{prefect.url}/api/health", timeout=120)
            services.wait_http(mlflow, f"{mlflow.url}/health", timeout=180)
            yield Stack(home, mlflow, prefect, home / "prefect")
        finally:
            patch.undo()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_mlflow_refuses_requests_without_credentials(stack: Stack) -> None:
    url = f"{stack.mlflow.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers=_basic(AUTH.username, "wrong password!!"), timeout=30).status_code == 401
    assert requests.get(url, headers=_basic(AUTH.username, PASSWORD), timeout=30).status_code == 200
    assert requests.get(f"{stack.mlflow.url}/health", timeout=30).status_code == 200  # probes stay open


def test_brandtunes_mlflow_client_authenticates_from_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """brandtune's registry client (what every brandtune command uses) needs nothing but the client env."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from brandtune.registry._client import client
    from brandtune.settings import Settings

    before = mlflow.get_tracking_uri()
    try:
        registry = client(Settings(home=stack.home, tracking_uri=str(stack.mlflow.url)))
        with pytest.raises(MlflowException, match=r"401|nauthorized|credentials"):
            registry.search_experiments()
        for key, value in AUTH.client_env().items():
            monkeypatch.setenv(key, value)
        assert registry.create_experiment("auth-check")
        assert [e.name for e in registry.search_experiments()].count("auth-check") == 1
    finally:
        mlflow.set_tracking_uri(before)  # client() points the process at this server; later tests must not be


def test_the_auth_config_is_private_and_holds_no_password(stack: Stack) -> None:
    folder = stack.home / services.AUTH_DIR
    ini = folder / services.AUTH_INI
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(ini.stat().st_mode) == 0o600
    text = ini.read_text()
    assert (
        PASSWORD not in text and "admin_password" not in text and f"admin_username = {AUTH.username}" in text
    )
    db = folder / services.AUTH_DB  # the user database lives beside it, not in the repo
    assert db.stat().st_size > 0 and stat.S_IMODE(db.stat().st_mode) == 0o600
    repo = Path(__file__).resolve().parents[1]
    assert not any(PASSWORD in p.read_text(errors="ignore") for p in repo.glob("*.ini"))


def test_prefect_refuses_requests_without_credentials(stack: Stack) -> None:
    url = f"{stack.prefect.url}/api/admin/version"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers=_basic(AUTH.username, "wrong password!!"), timeout=30).status_code == 401
    assert requests.get(url, headers=_basic(AUTH.username, PASSWORD), timeout=30).status_code == 200
    assert requests.get(f"{stack.prefect.url}/api/health", timeout=30).status_code == 200


def test_prefect_clients_authenticate_from_the_environment(stack: Stack) -> None:
    """The work pool set-up of ``brandtune ui`` (the Prefect CLI) fails without the auth string, works with it."""
    env = services.prefect_env(f"{stack.prefect.url}/api", stack.prefect_home)
    with pytest.raises(services.ServiceError, match=r"401|Unauthorized"):
        services.create_work_pool("auth-pool", {**env, "PREFECT_API_AUTH_STRING": ""})
    services.create_work_pool("auth-pool", {**env, **AUTH.client_env()})


def test_check_login_names_a_password_that_does_not_match(stack: Stack) -> None:
    url = f"{stack.mlflow.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    services.check_login(stack.mlflow, url, AUTH, fix="unused")
    other = UiAuth(username=AUTH.username, password=SecretStr("another password"))
    with pytest.raises(services.ServiceError, match=r"refused user 'brand-admin'.*\(401\): delete it") as err:
        services.check_login(stack.mlflow, url, other, fix="delete it")
    assert "\n" not in str(err.value) and "another password" not in str(err.value)


def test_a_missing_or_short_password_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="BRANDTUNE_UI_PASSWORD is not set; export") as err:
        UiAuth.from_env({})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="has 5 characters"):
        UiAuth.from_env({"BRANDTUNE_UI_PASSWORD": "short"})
    got = UiAuth.from_env({"BRANDTUNE_UI_PASSWORD": PASSWORD, "BRANDTUNE_UI_USER": "ops"})
    assert got.client_env() == {
        "MLFLOW_TRACKING_USERNAME": "ops",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "PREFECT_API_AUTH_STRING": f"ops:{PASSWORD}",
    }
    assert PASSWORD not in repr(got) and os.environ.get("BRANDTUNE_UI_PASSWORD") != PASSWORD


def test_brandtune_mlflow_ui_auth_serves_only_with_credentials(tmp_path: Path) -> None:
    """The command itself (``brandtune mlflow-ui --auth``, what ``make mlflow-ui`` runs with BRANDTUNE_UI_AUTH=1)."""
    import signal
    import subprocess
    import sys

    port = services.free_port()
    env = {
        **os.environ,
        "BRANDTUNE_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
        "BRANDTUNE_UI_AUTH": "1",
        "BRANDTUNE_UI_USER": AUTH.username,
        "BRANDTUNE_UI_PASSWORD": PASSWORD,
    }
    log = tmp_path / "mlflow-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from brandtune.cli import run; run()", "mlflow-ui", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    service = services.Service("brandtune mlflow-ui", proc, log, f"http://127.0.0.1:{port}")
    try:
        services.wait_http(service, f"{service.url}/health", timeout=180)
        url = f"{service.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, headers=_basic(AUTH.username, PASSWORD), timeout=30).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    printed = log.read_text()
    assert 'MLFLOW_TRACKING_PASSWORD="$BRANDTUNE_UI_PASSWORD"' in printed and PASSWORD not in printed
