"""``brandtune ui`` and ``brandtune mlflow-ui`` (brandtune.cli.ui) through the real entry point: what they refuse
before starting anything (the running servers are tested in tests/registry/test_server.py and the e2e tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from brandtune.cli.ui import find_repo

RunCli = Callable[[list[str]], tuple[int, str, str]]

REPO = Path(__file__).resolve().parents[2]


def test_ui_outside_a_checkout_says_where_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["ui"])
    assert code == 2 and out == ""
    assert "No prefect.yaml with a flows/ folder" in err and "inside the brandtune checkout" in err, err
    assert find_repo(REPO / "brandtune" / "cli") == REPO


def test_mlflow_ui_refuses_a_tracking_server(monkeypatch: pytest.MonkeyPatch, run_cli: RunCli) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code, out, err = run_cli(["mlflow-ui", "--port", "5999"])
    assert code == 2 and out == "" and "that is already a server" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", [["ui", "--auth"], ["mlflow-ui", "--auth", "--port", "5999"]])
def test_auth_without_a_password_is_one_line_before_anything_starts(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BRANDTUNE_UI_PASSWORD", raising=False)
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(command)
    assert code == 2 and out == "", (out, err)
    assert (
        "--auth needs a password: BRANDTUNE_UI_PASSWORD is not set" in err and len(err.splitlines()) == 1
    ), err
    assert not (tmp_path / "home").exists()  # no server, no auth config written


def test_brandtune_ui_auth_in_the_environment_turns_auth_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    """``make ui`` runs plain ``brandtune ui``: BRANDTUNE_UI_AUTH=1 gives it --auth."""
    monkeypatch.setenv("BRANDTUNE_UI_AUTH", "1")
    monkeypatch.setenv("BRANDTUNE_UI_PASSWORD", "short")
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["ui"])
    assert code == 2 and out == "" and "BRANDTUNE_UI_PASSWORD has 5 characters" in err, err
