"""A deployed brandtune stack for end-to-end tests: a real `prefect server` and `mlflow server` on loopback, the
README's "Scaling out" commands run as written (work pool, `prefect deploy --all`, a worker), and headless Chromium
for the UI. Used by tests/flows/test_deployments_e2e.py and tests/flows/test_automations_e2e.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from brandtune import services

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,3200",
    "--virtual-time-budget=30000",
]


def chromium() -> str:
    """Path of a chromium binary, installing Debian's package when missing (skip only if that fails)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {exc}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("`apt-get install chromium` ran but no chromium binary is on PATH")
    return found


# What the README's worker command must set by itself: the worker does not inherit these from the test process.
WORKER_SETUP_ENV = (
    "PREFECT_API_URL",
    "BRANDTUNE_REPO",
    "BRANDTUNE_HOME",
    "MLFLOW_TRACKING_URI",
    "BRANDTUNE_BRANDS_DIR",
)


def readme_commands() -> list[str]:
    """The commands of the README's fenced bash block under "## Prefect" > **Scaling out.**, one per entry."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    prefect = text[text.index("## Prefect") :]
    section = prefect[prefect.index("**Scaling out.**") :]
    found = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert found, "README: no ```bash block under **Scaling out.**"
    lines = found.group(1).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run_readme_commands(
    values: dict[str, str], env: dict[str, str], log_dir: Path, stack: services.ServiceStack
) -> tuple[str, services.Service]:
    """Run the README's commands as a shell would, each `<placeholder>` replaced from ``values``.

    ``export`` and ``cd`` carry over to later commands, ``VAR=value cmd`` sets VAR for ``cmd`` only; the worker
    (which runs until stopped) becomes a service of ``stack``. Returns the other commands' output and the worker.
    """
    cwd: Path | None = None
    output, worker = "", None
    for line in readme_commands():
        for key, value in values.items():
            line = line.replace(key, value)
        assert not re.search(r"<[\w-]+>", line), f"README placeholder this test does not know: {line!r}"
        words = shlex.split(line)
        if words[0] == "export":
            env.update(word.split("=", 1) for word in words[1:])
            continue
        if words[0] == "cd":
            cwd = Path(words[1])
            continue
        own = dict(env)
        while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            own[key] = value
        argv = [services.bin_path(words[0]), *words[1:]]
        if words[:3] == ["prefect", "worker", "start"]:
            worker = stack.add(
                services.start("prefect-worker", argv, log_dir, env=own, cwd=cwd, unset=WORKER_SETUP_ENV)
            )
        else:
            output += services.run_cli(argv, own, cwd=cwd)
    assert worker is not None, "the README's commands start no worker"
    return output, worker


def _restart_events_worker() -> None:
    """Drain and drop Prefect's events worker: a process-wide singleton that keeps the API URL current when it
    started, so one started against a stopped server would swallow every later event of this pytest worker (the
    session harness's task-run events included). The next event starts one against the API URL current then."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)


@contextmanager
def deployed_stack(root: Path, brandtune_home: Path) -> Iterator[dict[str, Any]]:
    """Prefect server + MLflow server, then the README's commands: work pool, every deployment, a worker."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    logs, prefect_home = root / "logs", root / "prefect"
    p_port, m_port = services.free_port(), services.free_port()
    with services.ServiceStack() as stack:
        api = stack.add(services.prefect_server(p_port, logs, prefect_home))
        mlflow = stack.add(services.mlflow_server(m_port, logs))
        services.wait_http(api, f"{api.url}/api/health", timeout=180)
        services.wait_http(mlflow, f"{mlflow.url}/health", timeout=180)
        # test-speed knobs only; everything the README's commands need comes from them
        env = {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        }
        values = {
            "<prefect-api-url>": f"{api.url}/api",
            "<checkout>": str(REPO_ROOT),
            "<brandtune-home>": str(brandtune_home),
            "<mlflow-url>": str(mlflow.url),
        }
        out, worker = run_readme_commands(values, env, logs, stack)
        assert "weekly-retrain" in out, out
        old_uri = os.environ["MLFLOW_TRACKING_URI"]
        os.environ["MLFLOW_TRACKING_URI"] = str(mlflow.url)
        try:
            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                _restart_events_worker()  # events sent from this process in here go to this stack's server
                try:
                    yield {
                        "api": api,
                        "mlflow": mlflow,
                        "worker": worker,
                        "stack": stack,
                        "env": env,
                        "logs": logs,
                    }
                finally:
                    _restart_events_worker()  # and none bound to it outlives the server
        finally:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
            stack.remember_descendants()
    # stack exit stopped every service and its descendants
    for service in (api, mlflow, worker):
        assert (
            not psutil.pid_exists(service.pid) or psutil.Process(service.pid).status() == psutil.STATUS_ZOMBIE
        )
