"""Local services for the UI and end-to-end tests: a Prefect server, an MLflow server, a Prefect worker.

Each service is a child process in its own process group, with its output in a log file. :func:`wait_http` waits
for a health URL and, when the service dies or does not answer in time, raises an error carrying the last lines of
its log. :func:`stop` ends the whole group: SIGTERM, a grace period, then SIGKILL for the group and for any
descendant that left it (a worker's flow runs, a flow run's training child), so nothing is left behind.

Example:
    >>> with ServiceStack() as stack:
    ...     api = stack.add(prefect_server(port, log_dir))
    ...     wait_http(api, f"{api.url}/api/health")
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from brandtune.errors import BrandtuneError, ConfigError
from brandtune.procs import signal_group, stop_process_group

if TYPE_CHECKING:
    from brandtune.settings import UiAuth

logger = logging.getLogger(__name__)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside the block, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt; the old handlers come back after.

    Ctrl-C, a closed terminal and ``kill`` then all end in the caller's clean stop, also when the process was
    started with SIGINT ignored (as a shell does for background jobs), where Python installs no handler of its own.
    """
    stop = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in stop}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLI_COLORS": "false",
    "PYTHONUNBUFFERED": "1",
}


class ServiceError(BrandtuneError, RuntimeError):
    """A local service did not start, did not become healthy, or a set-up command failed."""


@dataclass
class Service:
    """A running child process.

    Attributes:
        name: Short name for messages ("prefect-server").
        proc: The process (leader of its own process group).
        log_path: File receiving its stdout and stderr.
        url: Base URL, for servers.
    """

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def bin_path(name: str) -> str:
    """A console script of this environment (``prefect``, ``mlflow``), next to the running Python."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start(
    name: str,
    cmd: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str | None = None,
    unset: Sequence[str] = (),
) -> Service:
    """Start ``cmd`` in its own process group, its output going to ``<log_dir>/<name>.log``.

    It inherits this process's environment without the variables named in ``unset``, plus ``env``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**{k: v for k, v in os.environ.items() if k not in unset}, **QUIET_ENV, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    logger.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
    return Service(name, proc, log_path, url)


def wait_http(service: Service, url: str, timeout: float = 90.0, interval: float = 0.5) -> None:
    """Wait until ``url`` answers HTTP 200.

    Raises:
        ServiceError: the process exited, or ``timeout`` passed; the message has the last lines of its log.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        code = service.proc.poll()
        if code is not None:
            raise ServiceError(
                f"{service.name} exited with code {code} before {url} answered. Last log lines "
                f"({service.log_path}):\n{tail(service.log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{service.name} (pid {service.pid}) did not answer {url} within {timeout:.0f} s. Last log lines "
                f"({service.log_path}):\n{tail(service.log_path)}"
            )
        time.sleep(interval)


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _kill_pids(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pids: set[int]) -> set[int]:
    import psutil

    alive = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
    return alive


def stop(service: Service, grace: float = 10.0) -> None:
    """Stop a service and everything it started: SIGTERM to its group, then SIGKILL to what is left.

    Raises:
        ServiceError: a process of the service is still alive after SIGKILL (named with its pid).
    """
    others = _descendants(service.pid) | service.descendants
    stop_process_group(service.proc, grace, name=service.name)
    # descendants in other sessions (training children) get the same treatment
    deadline = time.monotonic() + grace
    _kill_pids(_alive(others), signal.SIGTERM)
    while _alive(others) and time.monotonic() < deadline:
        time.sleep(0.2)
    _kill_pids(_alive(others), signal.SIGKILL)
    signal_group(service.pid, signal.SIGKILL)  # stragglers that stayed in the group
    deadline = time.monotonic() + 5.0
    while (left := _alive(others)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        raise ServiceError(f"process(es) {', '.join(map(str, sorted(left)))} survived SIGKILL")
    logger.info("stopped %s (pid %d)", service.name, service.pid)


def stop_failed(service: Service, exc: BaseException) -> str:
    """One line for a service that could not be stopped: its pid, why, and what to do."""
    return (
        f"could not stop {service.name} (pid {service.pid}): {type(exc).__name__}: {exc}; stop it by hand "
        f"(kill -TERM -- -{service.pid}, then kill -KILL -- -{service.pid}) before starting the services again, "
        "or its port stays taken"
    )


class ServiceStack(contextlib.AbstractContextManager["ServiceStack"]):
    """Services stopped in reverse order of start on exit, also when the body raised."""

    def __init__(self) -> None:
        self.services: list[Service] = []

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def remember_descendants(self) -> None:
        """Record every service's current descendants (so they are stopped even if they leave the group)."""
        for service in self.services:
            service.descendants |= _descendants(service.pid)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.stop_all()
        except ServiceError:
            if exc_type is None:
                raise
            # the body's own error is the one raised; stop_all has logged what it could not stop

    def stop_all(self) -> None:
        """Stop every service, the last started first; each failure is logged as an error and the others are still
        stopped.

        Raises:
            ServiceError: a service could not be stopped (the first one, named with its pid and what to do).
        """
        failures: list[str] = []
        while self.services:
            service = self.services.pop()
            try:
                stop(service)
            except Exception as exc:  # keep stopping the others, then fail
                failures.append(stop_failed(service, exc))
                logger.error("%s", failures[-1])
        if failures:
            more = f" (and {len(failures) - 1} more, logged above)" if len(failures) > 1 else ""
            raise ServiceError(failures[0] + more)


def prefect_server(
    port: int, log_dir: Path, prefect_home: Path, host: str = "127.0.0.1", auth: UiAuth | None = None
) -> Service:
    """``prefect server start`` on ``host:port`` with its sqlite database under ``prefect_home``.

    With ``auth``, every API request but the health probes needs its basic credentials
    (``PREFECT_SERVER_API_AUTH_STRING``, passed in the environment, never on the command line).
    """
    cmd = [bin_path("prefect"), "server", "start", "--host", host, "--port", str(port)]
    env = {"PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": f"http://{host}:{port}/api"}
    if auth is not None:
        env |= {"PREFECT_SERVER_API_AUTH_STRING": auth.basic, "PREFECT_API_AUTH_STRING": auth.basic}
    return start("prefect-server", cmd, log_dir, env=env, url=f"http://{host}:{port}")


def server_command(port: int, host: str = "127.0.0.1", app_name: str | None = None) -> list[str]:
    """The ``mlflow server`` command line for the project's local store (sqlite + artifacts dir); ``app_name``
    ``basic-auth`` turns MLflow's authentication on (see :func:`mlflow_auth_env`).

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` already points at a server.
    """
    from brandtune.settings import Settings

    settings = Settings.from_env()
    if not settings.tracking_uri.startswith("sqlite:"):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {settings.tracking_uri}: that is already a server. Unset it to serve the "
            "local sqlite store under BRANDTUNE_HOME, or open that server's URL in a browser."
        )
    Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    # Artifacts stay plain file:// locations (not proxied mlflow-artifacts:/ URIs), so runs made through this
    # server and runs made straight on the sqlite store (no MLFLOW_TRACKING_URI) can read each other's artifacts.
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", settings.artifacts_dir.as_uri(), "--no-serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
    ] + (["--app-name", app_name] if app_name else [])  # fmt: skip


AUTH_DIR = "auth"  # under BRANDTUNE_HOME: MLflow's auth config and user database, private to the owner
AUTH_INI = "mlflow-basic-auth.ini"
AUTH_DB = "mlflow-auth.db"


def mlflow_auth_env(auth: UiAuth, home: Path) -> dict[str, str]:
    """Server environment for ``mlflow server --app-name basic-auth``.

    Writes ``<home>/auth/mlflow-basic-auth.ini`` (folder 0700, files 0600): the user database beside it, the admin
    user's name, no permission for users an admin did not grant one. The password is not in it: MLflow reads it
    from ``MLFLOW_AUTH_ADMIN_PASSWORD`` when it creates the admin user on first start. The Flask secret key (CSRF)
    is ``MLFLOW_FLASK_SERVER_SECRET_KEY`` when set, else a fresh random one for this server's lifetime.
    """
    import secrets

    folder = home / AUTH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ini = folder / AUTH_INI
    text = (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / AUTH_DB}\n"
        f"admin_username = {auth.username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    fd = os.open(ini, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    ini.chmod(0o600)
    db = (
        folder / AUTH_DB
    )  # created empty (a valid sqlite file) so that MLflow's writes keep the owner-only mode
    os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
    db.chmod(0o600)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": auth.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth.password.get_secret_value(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_urlsafe(32),
    }


def check_login(service: Service, url: str, auth: UiAuth, fix: str) -> None:
    """GET ``url`` (an endpoint behind the server's auth) with ``auth``'s credentials; it must answer 200.

    Raises:
        ServiceError: the server refused the credentials (``fix`` says what to do) or did not answer.
    """
    import base64
    import urllib.error
    import urllib.request

    token = base64.b64encode(auth.basic.encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ServiceError(
                f"{service.name} refused user {auth.username!r} with BRANDTUNE_UI_PASSWORD ({exc.code}): {fix}"
            ) from exc
        raise ServiceError(f"{service.name}: {url} answered {exc.code}; log: {service.log_path}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(f"{service.name}: {url} did not answer ({exc}); log: {service.log_path}") from exc


def server_env() -> dict[str, str]:
    """Environment additions for ``mlflow server``: no telemetry, and no job execution unless the user's
    environment turns it on (MLflow's GenAI jobs, which brandtune does not use: eight more processes, ~1.5 GB and
    ~25 CPU-seconds at every start)."""
    return {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


def mlflow_server(port: int, log_dir: Path, host: str = "127.0.0.1", auth: UiAuth | None = None) -> Service:
    """``mlflow server`` on the project's local store (sqlite + artifacts under BRANDTUNE_HOME); with ``auth``,
    MLflow's basic-auth app, whose admin is ``auth``'s user (:func:`mlflow_auth_env`)."""
    from brandtune.settings import Settings

    if auth is None:
        return start(
            "mlflow-server",
            server_command(port, host),
            log_dir,
            env=server_env(),
            url=f"http://{host}:{port}",
        )
    cmd = server_command(port, host, app_name="basic-auth")
    env = {**server_env(), **mlflow_auth_env(auth, Settings.from_env().home)}
    return start("mlflow-server", cmd, log_dir, env=env, url=f"http://{host}:{port}")


def prefect_env(api_url: str, prefect_home: Path, **extra: str) -> dict[str, str]:
    """Environment for Prefect clients, deploys and workers that talk to the server at ``api_url``."""
    return {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(prefect_home), **extra}


def run_cli(cmd: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a set-up command (work pool, deploy) to completion and return its output.

    Raises:
        ServiceError: it failed or timed out; the message has its last output lines.
    """
    try:
        done = subprocess.run(
            list(cmd),
            env={**os.environ, **QUIET_ENV, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        out = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise ServiceError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}:\n{out}")
    return done.stdout


def create_work_pool(pool: str, env: Mapping[str, str]) -> None:
    """Create (or update) a process work pool."""
    run_cli([bin_path("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"], env)


def deploy_all(repo: Path, env: Mapping[str, str], timeout: float = 300) -> str:
    """``prefect --no-prompt deploy --all`` from ``repo``'s prefect.yaml."""
    return run_cli([bin_path("prefect"), "--no-prompt", "deploy", "--all"], env, cwd=repo, timeout=timeout)


def worker(
    pool: str,
    log_dir: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    *,
    name: str = "prefect-worker",
    unset: Sequence[str] = (),
) -> Service:
    """``prefect worker start`` on a process work pool (``unset``: inherited variables it must not see)."""
    cmd = [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return start(name, cmd, log_dir, env=env, cwd=cwd, unset=unset)
