"""Registry through a real ``mlflow server`` on loopback: the network path, an outage, and ``mlflow-ui``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from mlflow_server import free_port, stop, wait_healthy
from registry_helpers import REPO_ROOT, clone_run, generate, reference_pipeline, train_acme

from brandtune.errors import RegistryError

pytestmark = [pytest.mark.usefixtures("torch_threads"), pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(on_server, tmp_path_factory: pytest.TempPathFactory):
    return train_acme(tmp_path_factory.mktemp("server_train") / "run")


def test_register_alias_load_promote_rollback_over_http(trained, on_server, tmp_path) -> None:
    import mlflow.diffusers

    import brandtune
    from brandtune.models import resolve_base
    from brandtune.registry import list_versions, promote, register, rollback

    v1 = register("acme", trained.mlflow_run_id, settings=on_server)
    assert register("acme", trained.mlflow_run_id, settings=on_server).version == v1.version
    assert "candidate" in v1.aliases
    got = generate(brandtune.load_pipeline("models:/acme-lora@candidate"))
    np.testing.assert_array_equal(got, generate(reference_pipeline(trained.adapter_dir)))

    v2 = register(
        "acme", clone_run(on_server.tracking_uri, trained.adapter_dir, tmp_path), settings=on_server
    )
    promote("acme", v1.version, settings=on_server)
    promote("acme", v2.version, settings=on_server)
    aliases = {r.version: set(r.aliases) for r in list_versions("acme", settings=on_server)}
    assert aliases == {v1.version: {"previous-champion"}, v2.version: {"candidate", "champion"}}
    rollback("acme", settings=on_server)
    aliases = {r.version: set(r.aliases) for r in list_versions("acme", settings=on_server)}
    assert aliases == {v1.version: {"champion"}, v2.version: {"candidate", "previous-champion"}}

    # plain MLflow, no brandtune loader: the flavor's base reference resolves through brandtune's resolver
    model = mlflow.diffusers.load_model("models:/acme-lora@champion")
    assert model.base_model == "builtin:tiny"
    pipe = model.load_pipeline(base_model=str(resolve_base(model.base_model).path), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(pipe), got)


def test_outage_during_registration_leaves_no_version_without_artifacts(
    trained, server, on_server, tmp_path
) -> None:
    import mlflow

    from brandtune.registry import register
    from brandtune.registry._register import download_adapter, log_adapter

    run_id = clone_run(on_server.tracking_uri, trained.adapter_dir, tmp_path)
    client = mlflow.MlflowClient(server.uri)
    # half-way: the adapter model is logged into the run, then the server goes down before the version exists
    tmp = tmp_path / "download"
    tmp.mkdir()
    adapter = download_adapter(client, run_id, tmp, server.uri)
    import json

    log_adapter(client, run_id, adapter, json.loads((adapter / "brandtune.json").read_text()), server.uri)
    server.stop()
    try:
        with pytest.raises(RegistryError) as err:
            register("acme", run_id, settings=on_server)
        assert server.uri in str(err.value) and "brandtune mlflow-ui" in str(err.value)
    finally:
        server.start()  # same store, same port
    assert not client.search_model_versions(
        f"name = 'acme-lora' and tags.`brandtune.source_run_id` = '{run_id}'"
    )
    version = register("acme", run_id, settings=on_server)
    assert register("acme", run_id, settings=on_server).version == version.version
    for mv in client.search_model_versions("name = 'acme-lora'"):
        files = {f.path for f in client.list_logged_model_artifacts(mv.source.removeprefix("models:/"))}
        assert "MLmodel" in files and "adapter_weights" in files, (mv.version, files)


def test_mlflow_ui_command_serves_and_stops_on_ctrl_c(tmp_path) -> None:
    import requests

    port = free_port()
    env = {**os.environ, "BRANDTUNE_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI")
    code = (  # started with SIGINT ignored, as a shell starts a background job: Ctrl-C must still stop it
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "import typer; from brandtune.cli.ui import add_commands; app = typer.Typer(); "
        "app.callback()(lambda: None); add_commands(app); app()"
    )
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "mlflow-ui", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:  # generous: the command waits up to 10 s for the server before SIGKILL, and a loaded box is slow
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mlflow-ui did not stop 90 s after SIGINT; its log:\n{log.read_text()}")
        assert code == 0, log.read_text()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert f"http://127.0.0.1:{port}" in log.read_text() and "stopped" in log.read_text()
    finally:
        stop(proc, signal.SIGKILL)
