"""Registry on a sqlite store: register, aliases, downstream loading, pulling, errors, CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from registry_helpers import REPO_ROOT, clone_run, generate, reference_pipeline, train_acme

from brandtune.errors import ConfigError, RegistryError
from brandtune.settings import Settings

pytestmark = pytest.mark.usefixtures("torch_threads")

HUB_ID = "brandtune-test/tiny-sd"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    return train_acme(tmp_path_factory.mktemp("registry_train") / "run")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="module")
def v1(trained, settings):
    from brandtune.registry import register

    return register("acme", trained.mlflow_run_id, settings=settings, flow_run_id="flow-123")


def test_register_records_lineage_description_and_candidate(v1, trained, settings) -> None:
    from brandtune.fsutil import sha256_file

    assert v1.name == "acme-lora"
    assert v1.run_id == trained.mlflow_run_id
    assert "candidate" in v1.aliases
    info = json.loads((trained.adapter_dir / "brandtune.json").read_text())
    tags = v1.tags
    for key in ("dataset_fingerprint", "base_model", "base_revision", "config_hash", "git_sha"):
        assert tags[f"brandtune.{key}"] == str(info[key]), key
    assert tags["brandtune.base_model"] == "builtin:tiny"
    assert tags["brandtune.base_revision"].startswith("sha256:")
    assert tags["brandtune.version"] == info["brandtune_version"]
    assert tags["brandtune.adapter_sha256"] == sha256_file(
        trained.adapter_dir / "pytorch_lora_weights.safetensors"
    )
    assert tags["brandtune.source_run_id"] == trained.mlflow_run_id
    assert tags["prefect.flow_run_id"] == "flow-123"
    assert tags["brandtune.dataset_images"] == "24"
    assert info["dataset_fingerprint"] in v1.description and "24 images" in v1.description
    assert "builtin:tiny" in v1.description and "10 steps" in v1.description and "rank 8" in v1.description
    # the model is logged into the training run itself (lineage is the run)
    import mlflow

    client = mlflow.MlflowClient(settings.tracking_uri)
    run = client.get_run(trained.mlflow_run_id)
    model_id = v1.source.removeprefix("models:/")
    assert any(o.model_id == model_id for o in run.outputs.model_outputs)
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == run.info.experiment_id and logged.status == "READY"
    assert not logged.artifact_location.startswith(("mlruns", "./mlruns"))


def test_register_twice_returns_the_same_version(v1, trained, settings) -> None:
    from brandtune.registry import list_versions, register

    again = register("acme", trained.mlflow_run_id, settings=settings)
    assert again.version == v1.version
    assert [
        r.version for r in list_versions("acme", settings=settings) if r.run_id == trained.mlflow_run_id
    ] == [v1.version]


def test_load_pipeline_by_alias_matches_in_memory_adapter(v1, trained) -> None:
    import brandtune
    from brandtune.models import load_base_pipeline, resolve_base

    pipe = brandtune.load_pipeline("models:/acme-lora@candidate")
    got = generate(pipe)
    want = generate(reference_pipeline(trained.adapter_dir))
    np.testing.assert_array_equal(got, want)
    base = generate(load_base_pipeline(resolve_base("builtin:tiny")))
    assert np.abs(got - base).max() > 1e-3  # the adapter does something
    assert pipe.get_active_adapters() == [f"acme_lora_v{v1.version}"]


def test_cache_by_version_and_tampered_file_healed(v1, settings, caplog) -> None:
    from brandtune.fsutil import sha256_file
    from brandtune.registry import adapter_cache_dir, fetch

    first = fetch(f"models:/acme-lora/{v1.version}", settings=settings)
    assert first.path.is_relative_to(adapter_cache_dir("acme-lora", v1.version, settings))
    assert fetch("models:/acme-lora@candidate", settings=settings).cached
    weights = first.path / "pytorch_lora_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="brandtune.registry"):
        healed = fetch("models:/acme-lora@candidate", settings=settings)
    assert not healed.cached and healed.path == first.path
    assert sha256_file(weights) == v1.tags["brandtune.adapter_sha256"]
    assert str(weights) in caplog.text and "downloading it again" in caplog.text


def test_plain_mlflow_loads_builtin_base_through_resolver(v1, trained) -> None:
    import mlflow.diffusers

    from brandtune.models import resolve_base

    model = mlflow.diffusers.load_model("models:/acme-lora@candidate")
    assert model.base_model == "builtin:tiny"
    assert model.base_model_revision == v1.tags["brandtune.base_revision"]
    pipe = model.load_pipeline(base_model=str(resolve_base(model.base_model).path), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(pipe), generate(reference_pipeline(trained.adapter_dir)))


def test_promote_and_rollback_move_aliases(v1, trained, settings, tmp_path) -> None:
    from brandtune.registry import list_versions, promote, register, rollback

    v2 = register("acme", clone_run(settings.tracking_uri, trained.adapter_dir, tmp_path), settings=settings)
    assert v2.version != v1.version and "candidate" in v2.aliases
    promote("acme", v1.version, settings=settings)
    moves = promote("acme", v2.version, settings=settings)
    assert [(m.alias, m.before, m.after) for m in moves] == [
        ("previous-champion", None, v1.version),
        ("champion", v1.version, v2.version),
    ]
    assert promote("acme", v2.version, settings=settings) == []
    aliases = {r.version: r.aliases for r in list_versions("acme", settings=settings)}
    assert set(aliases[v2.version]) == {"candidate", "champion"}
    assert aliases[v1.version] == ("previous-champion",)
    moves = rollback("acme", settings=settings)
    assert [(m.alias, m.before, m.after) for m in moves] == [
        ("champion", v2.version, v1.version),
        ("previous-champion", v1.version, v2.version),
    ]
    aliases = {r.version: r.aliases for r in list_versions("acme", settings=settings)}
    assert aliases[v1.version] == ("champion",)
    assert set(aliases[v2.version]) == {"candidate", "previous-champion"}


def test_list_versions_rows_carry_metrics(v1, settings) -> None:
    import mlflow

    from brandtune.registry import list_versions

    mlflow.MlflowClient(settings.tracking_uri).set_model_version_tag(
        "acme-lora", v1.version, "brandtune.metric.palette_delta_e", "12.5"
    )
    row = next(r for r in list_versions("acme", settings=settings) if r.version == v1.version)
    assert row.metrics == {"palette_delta_e": 12.5}
    assert row.created is not None and row.base_model == "builtin:tiny"
    assert row.tags["brandtune.dataset_fingerprint"]


def test_hub_base_is_recorded_as_hub_id_with_commit(v1, trained, settings, tmp_path) -> None:
    import mlflow.diffusers

    from brandtune.registry import load_pipeline, register

    run_id = clone_run(
        settings.tracking_uri, trained.adapter_dir, tmp_path, base_model=HUB_ID, base_revision=HUB_COMMIT
    )
    version = register("acme", run_id, settings=settings)
    model = mlflow.diffusers.load_model(f"models:/acme-lora/{version.version}")
    assert (model.base_model, model.base_model_revision) == (HUB_ID, HUB_COMMIT)
    assert version.tags["brandtune.base_model"] == HUB_ID
    # no hub here: brandtune's loader says which base it could not get and how to point at a local copy
    with pytest.raises(RegistryError, match=HUB_ID):
        load_pipeline(f"models:/acme-lora/{version.version}", settings=settings)
    # combining it with a builtin-base adapter is refused, naming both bases
    with pytest.raises(RegistryError, match=rf"(?s)builtin:tiny.*{HUB_ID}"):
        load_pipeline([(v1.uri, 0.5), (version.uri, 0.5)], settings=settings)


def test_base_revision_mismatch_is_refused(trained, settings, tmp_path) -> None:
    from brandtune.registry import load_pipeline, register

    wrong = "sha256:" + "0" * 64
    run_id = clone_run(settings.tracking_uri, trained.adapter_dir, tmp_path, base_revision=wrong)
    version = register("acme", run_id, settings=settings)
    with pytest.raises(RegistryError, match=r"mismatch") as err:
        load_pipeline(version.uri, settings=settings)
    assert wrong in str(err.value) and version.tags["brandtune.base_revision"] == wrong
    assert "sha256:" in str(err.value).replace(wrong, "")


def test_two_adapters_with_weights_and_fuse(v1, trained, settings, tmp_path) -> None:
    from brandtune.registry import load_pipeline, register

    other = register(
        "acme", clone_run(settings.tracking_uri, trained.adapter_dir, tmp_path), settings=settings
    )
    pipe = load_pipeline([(v1.uri, 0.5), (other.uri, 0.5)], settings=settings)
    assert sorted(pipe.get_active_adapters()) == sorted(
        [f"acme_lora_v{v1.version}", f"acme_lora_v{other.version}"]
    )
    # two copies of one adapter at half weight each add up to the adapter at full weight
    want = generate(reference_pipeline(trained.adapter_dir))
    np.testing.assert_allclose(generate(pipe), want, atol=1e-4)
    fused = load_pipeline(v1.uri, fuse=True, settings=settings)
    np.testing.assert_allclose(generate(fused), want, atol=1e-4)
    # fused means plain modules: no LoRA layer is left to cost time at every call
    assert not any("lora" in name for name, _ in fused.unet.named_modules())


def test_pull_writes_files_and_adapter_json(v1, trained, settings, tmp_path) -> None:
    from brandtune.fsutil import sha256_file
    from brandtune.registry import pull

    dest = pull("acme", v1.version, tmp_path / "out", settings=settings)
    meta = json.loads((dest / "adapter.json").read_text())
    weights = dest / "pytorch_lora_weights.safetensors"
    assert meta["sha256"] == sha256_file(weights) == v1.tags["brandtune.adapter_sha256"]
    assert meta["registered_model"] == "acme-lora" and meta["version"] == v1.version
    assert meta["base_model"] == "builtin:tiny" and meta["base_revision"].startswith("sha256:")
    assert meta["trigger"] == "acme" and meta["prompt_prefix"] == "acme bottle"
    assert (dest / "brandtune.json").is_file()
    # a generator without brandtune: plain diffusers with the files pulled
    np.testing.assert_array_equal(
        generate(reference_pipeline(dest)), generate(reference_pipeline(trained.adapter_dir))
    )


def test_errors_name_what_exists(v1, settings) -> None:
    from brandtune.registry import fetch, promote, register, rollback

    with pytest.raises(RegistryError, match=r"acme-lora") as err:
        fetch("models:/nosuch-lora@champion", settings=settings)
    assert "nosuch-lora" in str(err.value)
    with pytest.raises(RegistryError, match=r"@candidate") as err:
        fetch("models:/acme-lora@gold", settings=settings)
    assert "@gold" in str(err.value)
    with pytest.raises(ConfigError, match="models:/"):
        fetch("acme-lora@champion", settings=settings)
    with pytest.raises(RegistryError, match="version 999"):
        promote("acme", 999, settings=settings)
    with pytest.raises(RegistryError, match="No MLflow run"):
        register("acme", "0" * 32, settings=settings)
    with pytest.raises(RegistryError, match="acme-lora"):
        rollback("nosuch", settings=settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_with_uri_and_fix(trained, tmp_path) -> None:
    from brandtune.registry import fetch, register

    uri = f"http://127.0.0.1:{_free_port()}"
    settings = Settings(home=tmp_path, tracking_uri=uri)
    for call in (
        lambda: register("acme", trained.mlflow_run_id, settings=settings),
        lambda: fetch("models:/acme-lora@champion", settings=settings),
    ):
        with pytest.raises(RegistryError) as err:
            call()
        assert uri in str(err.value) and "brandtune mlflow-ui" in str(err.value)


def test_import_brandtune_stays_light() -> None:
    code = (
        "import sys, brandtune, brandtune.registry, brandtune.cli.registry; "
        "heavy = [m for m in ('mlflow', 'torch', 'diffusers') if m in sys.modules]; "
        "assert not heavy, heavy; assert callable(brandtune.load_pipeline)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=os.environ.copy())


def test_cli_commands(v1, trained, settings, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from brandtune.cli.registry import add_commands

    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, as in brandtune.cli
        pass

    add_commands(app)
    runner = CliRunner()
    run_id = clone_run(settings.tracking_uri, trained.adapter_dir, tmp_path)
    result = runner.invoke(app, ["register", "--brand", "acme", "--run", run_id])
    assert result.exit_code == 0, result.output
    number = re.search(r"version (\d+)", result.output)[1]
    result = runner.invoke(app, ["promote", "acme", "--version", number])
    assert result.exit_code == 0 and "@champion" in result.output, result.output
    result = runner.invoke(app, ["models", "list", "acme"])
    assert result.exit_code == 0 and number in result.output and "champion" in result.output, result.output
    result = runner.invoke(app, ["rollback", "acme"])
    assert result.exit_code == 0 and "@champion" in result.output, result.output
    result = runner.invoke(app, ["pull", "acme", "--version", number, "--dest", str(tmp_path / "pulled")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pulled" / "adapter.json").is_file()
    result = runner.invoke(app, ["pull", "acme", "--alias", "gold", "--dest", str(tmp_path / "x")])
    assert result.exit_code != 0 and isinstance(result.exception, RegistryError)
