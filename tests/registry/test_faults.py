"""Fault injection on the registry with real processes: a real ``mlflow server`` on loopback, ``brandtune``
commands run as subprocesses that SIGKILL themselves at a fault point (``BRANDTUNE_FAULT``), then the server is
SIGKILLed and restarted on the same store and the command is run again.

After every crash and re-run: exactly one version per training run; an alias only ever points at a READY version
with its complete tag set; @champion/@previous-champion are a consistent pair; ``brandtune doctor`` is clean. A
promotion decided against a champion that moved is refused, and of two promotions started together one wins and the
other says the champion moved.

One adapter is trained per module; every version registers a clone of it (``clone_run``), so nothing trains twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import Server
from registry_helpers import REPO_ROOT, clone_run, train_acme

from brandtune.settings import Settings

pytestmark = pytest.mark.usefixtures("torch_threads")

NAME = "acme-lora"
EVALUATE = [sys.executable, "-m", "brandtune.cli", "evaluate", "--brand", "acme"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one adapter trained in this module (into the module's sqlite store; only its folder is used)."""
    return train_acme(tmp_path_factory.mktemp("faults_train") / "run").adapter_dir


def cli(server: Server, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m brandtune.cli ARGS`` against the server, dying at ``fault`` when given."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    env.pop("BRANDTUNE_FAULT", None)
    if fault:
        env["BRANDTUNE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "brandtune.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def crash(server: Server, *args: str, fault: str) -> None:
    """Run a command that SIGKILLs itself at ``fault``, then SIGKILL the server and start it again."""
    result = cli(server, *args, fault=fault)
    assert result.returncode == -signal.SIGKILL, (fault, result.returncode, result.stderr[-2000:])
    server.kill()
    server.start()


def state(settings: Settings) -> tuple[dict[str, str], dict[str, Any]]:
    """The aliases (alias -> version) and every version (number -> RegisteredVersion) of acme-lora."""
    import mlflow

    from brandtune.registry import RegisteredVersion

    mlc = mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    if not mlc.search_registered_models(f"name = '{NAME}'"):
        return {}, {}  # a registration killed before it made the model
    model = mlc.get_registered_model(NAME)
    rows = [RegisteredVersion.from_mlflow(mv) for mv in mlc.search_model_versions(f"name = '{NAME}'")]
    return {a: str(v) for a, v in model.aliases.items()}, {r.version: r for r in rows}


def assert_aliases_safe(settings: Settings) -> None:
    """What must hold at any moment, even right after a crash: aliases only on READY+complete versions."""
    aliases, rows = state(settings)
    for alias, number in aliases.items():
        assert number in rows and rows[number].complete, (alias, number, rows.get(number))


def assert_consistent(settings: Settings, run_ids: list[str]) -> None:
    """After the re-run: one complete version per run, a consistent pair, no pending move, doctor clean."""
    from brandtune.doctor import examine

    aliases, rows = state(settings)
    for run_id in run_ids:
        mine = [r for r in rows.values() if r.tags.get("brandtune.source_run_id") == run_id]
        assert len(mine) == 1 and mine[0].complete, (run_id, mine)
        for key in ("brandtune.adapter_sha256", "brandtune.base_model", "brandtune.dataset_fingerprint"):
            assert mine[0].tags.get(key), (key, mine[0].tags)
    assert_aliases_safe(settings)
    if "previous-champion" in aliases:
        assert "champion" in aliases and aliases["champion"] != aliases["previous-champion"], aliases
    assert examine(settings, brand="acme") == []


def register_clone(settings: Settings, adapter: Path, tmp: Path) -> tuple[str, str]:
    """A complete version registered in this process: (run id, version)."""
    from brandtune.registry import register

    run_id = clone_run(settings.tracking_uri, adapter, tmp)
    return run_id, register("acme", run_id, settings=settings).version


@pytest.mark.parametrize(
    "fault",
    ["registry.after_logged_model", "registry.after_create_version", "registry.after_complete_tag"],
)
def test_register_killed_at_each_step_then_run_again(
    fault: str, server: Server, on_server: Settings, adapter: Path, tmp_path: Path
) -> None:
    import mlflow

    from brandtune.registry import register

    run_id = clone_run(on_server.tracking_uri, adapter, tmp_path)
    crash(server, "register", "--brand", "acme", "--run", run_id, fault=fault)
    assert_aliases_safe(on_server)  # never an alias on the half-registered version
    result = cli(server, "register", "--brand", "acme", "--run", run_id)
    assert result.returncode == 0, result.stderr
    assert_consistent(on_server, [run_id])
    aliases, rows = state(on_server)
    mine = next(r for r in rows.values() if r.tags.get("brandtune.source_run_id") == run_id)
    assert aliases["candidate"] == mine.version == max(rows, key=int)
    assert register("acme", run_id, settings=on_server).version == mine.version  # idempotent
    mlc = mlflow.MlflowClient(on_server.tracking_uri)
    experiment = mlc.get_run(run_id).info.experiment_id
    logged = mlc.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    assert [m.model_id for m in logged] == [mine.source.removeprefix("models:/")]  # uploaded once


def test_half_registered_version_is_refused_then_doctor_repairs_it(
    server: Server, on_server: Settings, adapter: Path, tmp_path: Path
) -> None:
    from brandtune.doctor import examine
    from brandtune.errors import RegistryError
    from brandtune.registry import promote

    run_id = clone_run(on_server.tracking_uri, adapter, tmp_path)
    crash(server, "register", "--brand", "acme", "--run", run_id, fault="registry.after_create_version")
    _, rows = state(on_server)
    half = next(r for r in rows.values() if r.tags.get("brandtune.source_run_id") == run_id)
    assert not half.complete
    with pytest.raises(RegistryError, match=f"version {half.version} is a half-finished registration"):
        promote("acme", half.version, settings=on_server)
    refused = cli(server, "pull", "acme", "--version", half.version, "--dest", str(tmp_path / "pulled"))
    err = refused.stderr.strip()
    assert refused.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"version {half.version}" in err and "doctor --fix" in err and run_id in err, err
    assert not (tmp_path / "pulled").exists()
    found = examine(on_server, brand="acme")
    assert [(f.check, f.subject, f.fixed) for f in found] == [
        ("registration", f"{NAME} version {half.version}", False)
    ], found
    fixed = cli(server, "doctor", "--brand", "acme", "--fix")
    assert fixed.returncode == 0 and "repaired 2 finding(s)" in fixed.stdout, fixed.stdout + fixed.stderr
    assert_consistent(on_server, [run_id])
    assert state(on_server)[0]["candidate"] == half.version


@pytest.fixture(scope="module")
def released(server: Server, on_server: Settings, adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three complete versions; the first is @champion."""
    from brandtune.registry import promote

    made = [register_clone(on_server, adapter, tmp_path_factory.mktemp("rel"))[1] for _ in range(3)]
    promote("acme", made[0], settings=on_server)
    return made


def _pair(settings: Settings) -> tuple[str | None, str | None]:
    aliases = state(settings)[0]
    return aliases.get("champion"), aliases.get("previous-champion")


@pytest.mark.parametrize(
    "fault", ["aliases.after_intent", "aliases.after_previous", "aliases.after_champion"]
)
def test_promote_killed_at_each_step_then_run_again(
    fault: str, server: Server, on_server: Settings, released: list[str]
) -> None:
    from brandtune.doctor import examine
    from brandtune.registry import promote

    champion, _ = _pair(on_server)
    target = next(v for v in released if v != champion)
    crash(server, "promote", "acme", "--version", target, fault=fault)
    assert_aliases_safe(on_server)
    pending = examine(on_server, brand="acme")
    assert [(f.check, f.fixed) for f in pending] == [("aliases", False)], pending
    assert "interrupted" in pending[0].problem
    result = cli(server, "promote", "acme", "--version", target, "--expect-champion", champion)
    # the re-run finishes the interrupted move first; it is then already in place (the CAS sees the new champion,
    # which is the target itself)
    assert result.returncode == 0, result.stderr
    assert _pair(on_server) == (target, champion)
    assert_consistent(on_server, [])
    assert promote("acme", target, settings=on_server) == []


@pytest.mark.parametrize("fault", ["aliases.after_intent", "aliases.after_champion"])
def test_rollback_killed_then_run_again_rolls_back_once(
    fault: str, server: Server, on_server: Settings, released: list[str]
) -> None:
    champion, previous = _pair(on_server)
    assert champion and previous
    crash(server, "rollback", "acme", fault=fault)
    assert_aliases_safe(on_server)
    result = cli(server, "rollback", "acme")
    assert result.returncode == 0, result.stderr
    assert _pair(on_server) == (previous, champion)  # swapped once, not twice
    assert_consistent(on_server, [])


def test_doctor_fix_finishes_an_interrupted_promotion(
    server: Server, on_server: Settings, released: list[str]
) -> None:
    champion, _ = _pair(on_server)
    target = next(v for v in released if v != champion)
    crash(server, "promote", "acme", "--version", target, fault="aliases.after_previous")
    fixed = cli(server, "doctor", "--fix")
    assert fixed.returncode == 0 and "repaired 1 finding(s)" in fixed.stdout, fixed.stdout + fixed.stderr
    assert _pair(on_server) == (target, champion)
    assert_consistent(on_server, [])


def test_promotion_against_a_moved_champion_is_refused(on_server: Settings, released: list[str]) -> None:
    from brandtune.registry import ChampionMovedError, promote

    champion, previous = _pair(on_server)
    other = next(v for v in released if v not in (champion, previous))
    with pytest.raises(ChampionMovedError) as err:
        promote("acme", other, expected_champion=previous, settings=on_server)
    assert (
        f"champion moved from v{previous} to v{champion} since this evaluation; re-run the evaluation"
        in str(err.value)
    )
    assert _pair(on_server) == (champion, previous)
    with pytest.raises(ChampionMovedError, match=f"from none to v{champion}"):
        promote("acme", other, expected_champion=None, settings=on_server)
    assert promote("acme", other, expected_champion=champion, settings=on_server)
    assert _pair(on_server) == (other, champion)


def test_two_promotions_at_once_one_wins_the_other_says_the_champion_moved(
    server: Server, on_server: Settings, released: list[str]
) -> None:
    champion, _ = _pair(on_server)
    a, b = (v for v in released if v != champion)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "brandtune.cli",
                "promote",
                "acme",
                "--version",
                v,
                "--expect-champion",
                champion,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (a, b)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, outs)
    winner = (a, b)[codes.index(0)]
    loser_err = outs[codes.index(2)][1]
    assert f"champion moved from v{champion} to v{winner}" in loser_err, loser_err
    assert _pair(on_server) == (winner, champion)
    assert_consistent(on_server, [])


def test_two_evaluations_promoting_at_once_one_wins_the_other_is_told_the_champion_moved(
    server: Server, on_server: Settings, released: list[str], tmp_path: Path
) -> None:
    from brandtune.registry import fetch, model_uri

    champion, _ = _pair(on_server)
    a, b = (v for v in released if v != champion)
    for number in (a, b, champion):  # in the adapter cache before the two processes start
        fetch(model_uri("acme", number), settings=on_server)
    config = tmp_path / "eval.yaml"
    config.write_text(
        "brand: acme\nseeds: [0]\ninclude_base: false\nsampler: {num_inference_steps: 2}\n"
        "gate: {rules: [{metric: technical_ok, comparison: min, threshold: 0.0}]}\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    procs = [
        subprocess.Popen(
            [*EVALUATE, "--candidate", v, "--config", str(config), "--output", str(tmp_path / f"eval-{v}")],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (a, b)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs  # a refused promotion is an outcome, not a crash
    promoted = ["promoted to @champion" in out for out, _ in outs]
    assert sorted(promoted) == [False, True], outs
    winner = (a, b)[promoted.index(True)]
    _, loser_err = outs[promoted.index(False)]
    assert f"champion moved from v{champion} to v{winner} since this evaluation" in loser_err, loser_err
    assert _pair(on_server) == (winner, champion)
    assert_consistent(on_server, [])


def test_duplicate_versions_of_one_run_from_older_code_are_found_and_removed(
    on_server: Settings, adapter: Path, tmp_path: Path
) -> None:
    import mlflow

    from brandtune.doctor import examine
    from brandtune.registry import register

    run_id, number = register_clone(on_server, adapter, tmp_path)
    mlc = mlflow.MlflowClient(on_server.tracking_uri, registry_uri=on_server.tracking_uri)
    mv = mlc.get_model_version(NAME, number)
    # what the old blind retry of create_model_version left: a second version of the run, never completed
    tags = {k: v for k, v in mv.tags.items() if k != "brandtune.registration"}
    model_id = mv.source.removeprefix("models:/")
    dup = mlc.create_model_version(NAME, mv.source, run_id=run_id, tags=tags, model_id=model_id)
    assert register("acme", run_id, settings=on_server).version == number  # the complete one, not the newest
    found = examine(on_server, brand="acme")
    assert [(f.check, f.subject, f.fixed) for f in found] == [
        ("registration", f"{NAME} version {dup.version}", False)
    ], found
    assert f"duplicate version of training run {run_id}" in found[0].problem
    assert [f.fixed for f in examine(on_server, brand="acme", fix=True)] == [True]
    assert_consistent(on_server, [run_id])


def test_doctor_repairs_alias_states_left_by_older_code(on_server: Settings, released: list[str]) -> None:
    import mlflow

    from brandtune.doctor import examine

    champion, _ = _pair(on_server)
    mlc = mlflow.MlflowClient(on_server.tracking_uri, registry_uri=on_server.tracking_uri)
    # the old promote died between its two alias calls; a hand-edited intent tag lies beside it
    mlc.set_registered_model_alias(NAME, "previous-champion", champion)
    mlc.set_registered_model_tag(NAME, "brandtune.alias_move", "{not json")
    found = examine(on_server, brand="acme")
    assert [(f.check, f.fixed) for f in found] == [("aliases", False)], found
    fixed = examine(on_server, brand="acme", fix=True)
    assert [f.fixed for f in fixed] == [True, True], fixed
    assert "both point at" in fixed[1].problem
    assert _pair(on_server) == (champion, None)
    assert_consistent(on_server, [])
