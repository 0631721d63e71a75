"""``brandtune ui`` (a local Prefect server, the MLflow UI and a worker, with every deployment of prefect.yaml)
and ``brandtune mlflow-ui`` (the MLflow UI alone).

The processes are supervised by :mod:`brandtune.services`: each runs in its own process group and Ctrl-C stops all
of them (SIGTERM, then SIGKILL after a grace period). ``ui --demo`` runs the flows through their deployments, so
it reaches them over the Prefect API, never by importing ``flows``.

The servers listen on loopback only, which any user of the machine can reach. On a shared host, ``--auth`` (or
``BRANDTUNE_UI_AUTH=1``, so that ``make ui`` and ``make mlflow-ui`` get it too) turns on MLflow's basic-auth app and
Prefect's API auth string, with the user and password of ``BRANDTUNE_UI_USER`` / ``BRANDTUNE_UI_PASSWORD``
(:class:`brandtune.settings.UiAuth`); the worker and the deploys get the client credentials in their environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brandtune.cli._common import console
from brandtune.errors import ConfigError

if TYPE_CHECKING:
    from brandtune.settings import UiAuth

POOL = "brandtune-local"
AUTH_HELP = "Require a user and password (BRANDTUNE_UI_USER, default admin, and BRANDTUNE_UI_PASSWORD) on a shared host."
AuthOption = Annotated[bool, typer.Option("--auth", envvar="BRANDTUNE_UI_AUTH", help=AUTH_HELP)]


def add_commands(app: typer.Typer) -> None:
    """Add ``mlflow-ui`` and ``ui`` to the ``brandtune`` app."""
    app.command("mlflow-ui")(mlflow_ui_cmd)
    app.command("ui")(ui_cmd)


def mlflow_ui_cmd(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 5000,
    auth: AuthOption = False,
) -> None:
    """Start an MLflow server (UI + registry) on the project's local store; Ctrl-C stops it."""
    from brandtune.procs import stop_process_group
    from brandtune.services import mlflow_auth_env, server_command, server_env, stop_signals_interrupt
    from brandtune.settings import Settings, UiAuth

    ui_auth = UiAuth.from_env() if auth else None
    cmd = server_command(port, app_name="basic-auth" if ui_auth else None)
    env = {**os.environ, **server_env()}
    if ui_auth is not None:
        env |= mlflow_auth_env(ui_auth, Settings.from_env().home)
    url = f"http://127.0.0.1:{port}"
    console.print(f"[bold green]MLflow[/] at {url}  (store {cmd[cmd.index('--backend-store-uri') + 1]})")
    console.print(f"  other shells: export MLFLOW_TRACKING_URI={url}   stop: Ctrl-C")
    if ui_auth is not None:
        _print_client_auth(ui_auth, prefect=False)
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        with stop_signals_interrupt():  # also when started with SIGINT ignored (a shell's background job)
            code = proc.wait()
    except KeyboardInterrupt:
        stop_process_group(proc, grace_s=10, name="mlflow server")
        console.print("MLflow server stopped")
        return
    if code:
        raise typer.Exit(code)


def find_repo(start: Path | None = None) -> Path:
    """The checkout holding prefect.yaml: ``start`` (default: the working directory) or a parent of it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "prefect.yaml").is_file() and (folder / "flows").is_dir():
            return folder
    raise ConfigError(
        f"No prefect.yaml with a flows/ folder in {here} or its parents: run `brandtune ui` inside the brandtune "
        "checkout."
    )


def _print_client_auth(auth: UiAuth, prefect: bool = True) -> None:
    """How other shells authenticate (the password itself is never printed)."""
    lines = [
        f"export MLFLOW_TRACKING_USERNAME={auth.username}",
        'export MLFLOW_TRACKING_PASSWORD="$BRANDTUNE_UI_PASSWORD"',
    ]
    if prefect:
        lines.append(f'export PREFECT_API_AUTH_STRING="{auth.username}:$BRANDTUNE_UI_PASSWORD"')
    console.print("  auth on, other shells also need:")
    for line in lines:
        console.print(f"                {line}", highlight=False, soft_wrap=True)


def start_stack(
    stack: Any, repo: Path, prefect_port: int, mlflow_port: int, pool: str, auth: UiAuth | None = None
) -> dict[str, str]:
    """Start server, MLflow and worker into ``stack``, deploy everything; return the URLs and environment.

    With ``auth``, both servers require its credentials, and the deploys and the worker get them as client
    settings (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``PREFECT_API_AUTH_STRING``).
    """
    from brandtune import services
    from brandtune.settings import Settings

    settings = Settings.from_env()
    logs = settings.home / "logs" / "ui"
    prefect_home = Path(os.environ.get("PREFECT_HOME") or settings.home / "prefect")
    api = stack.add(services.prefect_server(prefect_port, logs, prefect_home, auth=auth))
    mlflow = stack.add(services.mlflow_server(mlflow_port, logs, auth=auth))
    console.print(f"starting Prefect ({api.url}) and MLflow ({mlflow.url}); logs in {logs}")
    services.wait_http(api, f"{api.url}/api/health", timeout=120)
    services.wait_http(mlflow, f"{mlflow.url}/health", timeout=180)
    if auth is not None:
        users = settings.home / services.AUTH_DIR / services.AUTH_DB
        services.check_login(
            mlflow,
            f"{mlflow.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
            auth,
            fix=f"MLflow set its admin password when it created {users}; export that password, or stop the UI "
            "and delete that file to start over",
        )
    env = services.prefect_env(
        f"{api.url}/api",
        prefect_home,
        MLFLOW_TRACKING_URI=str(mlflow.url),
        BRANDTUNE_REPO=str(repo),
        BRANDTUNE_HOME=str(settings.home),
        **(auth.client_env() if auth is not None else {}),
    )
    services.create_work_pool(pool, env)
    console.print("deploying prefect.yaml ...")
    services.deploy_all(repo, env)
    stack.add(services.worker(pool, logs, env, cwd=repo))
    return {"prefect": str(api.url), "mlflow": str(mlflow.url), **env}


def run_demo(env: dict[str, str]) -> None:
    """Run ``retrain`` then ``generate`` through their deployments and print where to look."""
    os.environ.update(env)
    from prefect.deployments import run_deployment

    console.print("[bold]demo[/]: retrain (weekly-retrain deployment) ...")
    run = run_deployment(
        "retrain/weekly-retrain",
        parameters={"brand": "acme"},  # the deployment's training settings: the base's recommendation
        timeout=3600,
    )
    if not run.state or not run.state.is_completed():
        raise ConfigError(
            f"retrain flow run {run.id} ended {run.state and run.state.name}: see {env['prefect']}"
        )
    result = run.state.result()
    console.print(f"  flow run:      {env['prefect']}/runs/flow-run/{run.id}")
    console.print(f"  MLflow run:    {env['mlflow']}/#/experiments (run {result['mlflow_run_id']})")
    console.print(f"  model version: {env['mlflow']}/#/models/acme-lora/versions/{result['version']}")
    if not result["trained"]:
        console.print(f"  nothing changed: {result['message']}", highlight=False)
    else:
        console.print(f"  gate: {'passed, promoted' if result['promoted'] else 'not promoted'}")
    model = "champion" if result["promoted"] or result["champion_before"] else str(result["version"])
    run = run_deployment(
        "generate/generate-campaign",
        parameters={"brand": "acme", "variations": 2, "model": model},
        timeout=1800,
    )
    if run.state and run.state.is_completed():
        console.print(f"  gallery:       {run.state.result()['gallery']}")


def ui_cmd(
    prefect_port: Annotated[int, typer.Option(help="Prefect server port on 127.0.0.1.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port on 127.0.0.1.")] = 5000,
    pool: Annotated[str, typer.Option(help="Process work pool to create and serve.")] = POOL,
    demo: Annotated[
        bool, typer.Option(help="Also run retrain then generate on acme through Prefect.")
    ] = False,
    auth: AuthOption = False,
) -> None:
    """Start the Prefect UI, the MLflow UI and a worker with every deployment; Ctrl-C stops them all."""
    from brandtune.services import stop_signals_interrupt
    from brandtune.settings import UiAuth

    ui_auth = UiAuth.from_env() if auth else None  # a missing password stops here, before anything starts
    repo = find_repo()
    with stop_signals_interrupt():  # Ctrl-C, a closed terminal and `kill` all end in the same clean stop
        _serve(repo, prefect_port, mlflow_port, pool, demo, ui_auth)
    console.print("all services stopped")


def _serve(
    repo: Path, prefect_port: int, mlflow_port: int, pool: str, demo: bool, auth: UiAuth | None = None
) -> None:
    from brandtune.services import ServiceStack

    with ServiceStack() as stack:
        try:
            env = start_stack(stack, repo, prefect_port, mlflow_port, pool, auth)
            console.print(f"[bold green]Prefect UI[/]  {env['prefect']}/deployments")
            console.print(f"[bold green]MLflow UI[/]   {env['mlflow']}")
            console.print(f"  other shells: export PREFECT_API_URL={env['PREFECT_API_URL']}")
            console.print(f"                export MLFLOW_TRACKING_URI={env['mlflow']}")
            if auth is not None:
                _print_client_auth(auth)
            console.print("  stop: Ctrl-C")
            if demo:
                run_demo(env)
            while all(s.proc.poll() is None for s in stack.services):
                stack.remember_descendants()
                time.sleep(1)
            dead = [s for s in stack.services if s.proc.poll() is not None]
            raise ConfigError(
                f"{dead[0].name} exited (code {dead[0].proc.returncode}); log: {dead[0].log_path}"
            )
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
            console.print("stopping (a few seconds) ...")
