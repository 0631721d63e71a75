"""The registry commands (brandtune.cli.registry) through the real entry point, on an empty registry (the commands
on a registered version are tested in tests/registry/test_registry.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.mark.parametrize(
    "args",
    [
        ["promote", "acme", "--version", "3"],
        ["rollback", "acme"],
        ["models", "list", "acme"],
        ["pull", "acme", "--alias", "champion", "--dest", "out"],
        ["register", "--brand", "acme", "--run", "0123456789abcdef"],
    ],
    ids=["promote", "rollback", "models-list", "pull", "register"],
)
def test_a_missing_model_or_run_is_one_error_line(args: list[str], run_cli: RunCli, tmp_path: Path) -> None:
    code, out, err = run_cli([a.replace("out", str(tmp_path / "out")) for a in args])
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_pull_needs_exactly_one_of_alias_and_version(run_cli: RunCli, tmp_path: Path) -> None:
    for extra in ([], ["--alias", "champion", "--version", "1"]):
        code, _, err = run_cli(["pull", "acme", "--dest", str(tmp_path), *extra])
        assert code == 2 and "Give exactly one of --alias NAME or --version N" in err, err


def test_promote_expect_champion_must_be_a_version_or_none(run_cli: RunCli) -> None:
    code, out, err = run_cli(["promote", "acme", "--version", "2", "--expect-champion", "latest"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--expect-champion 'latest'" in err and "'none'" in err, err


def test_doctor_on_an_empty_registry_is_clean(run_cli: RunCli) -> None:
    code, out, _ = run_cli(["doctor", "--brand", "acme"])
    assert code == 0 and "nothing to repair" in out, out
    code, out, _ = run_cli(["doctor", "--fix"])
    assert code == 0 and "nothing to repair" in out, out
