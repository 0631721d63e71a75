"""The ``brandtune`` app (brandtune.cli.app): usage errors in one line with a usage hint, brandtune errors in one
line, --debug shows the traceback, and every command is there."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from brandtune.cli import run
from brandtune.errors import GenerationError

BRANDTUNE = Path(sys.executable).parent / "brandtune"  # the console entry point pip installed

RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.mark.parametrize(
    ("args", "error", "usage"),
    [
        (["generate", "--stepz", "3"], "No such option: --stepz", "brandtune generate [OPTIONS]"),
        (["register", "--brand", "acme"], "Missing option '--run'", "brandtune register [OPTIONS]"),
        (["base", "sample", "a mug", "--num", "many"], "Invalid value for '--num'", "brandtune base sample"),
        (
            ["generate", "-b", "acme", "--prompt", "p", "--scheduler", "dpm"],
            "Invalid value for '--scheduler'",
            "brandtune generate [OPTIONS]",
        ),
        (["train", "--bogus"], "No such option: --bogus", "brandtune train [OPTIONS]"),
    ],
    ids=[
        "unknown-option",
        "missing-required-option",
        "bad-value-in-a-sub-group",
        "bad-choice",
        "unknown-train-option",
    ],
)
def test_usage_error_is_one_line_with_usage_hint(args: list[str], error: str, usage: str) -> None:
    proc = subprocess.run([str(BRANDTUNE), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("error: ") and error in lines[0], lines[0]
    assert lines[1].startswith(f"  usage: {usage}") and "--help" in lines[1], lines[1]


def test_brandtune_errors_stay_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, run_cli: RunCli
) -> None:
    args = ["generate", "--reproduce", str(tmp_path / "missing.json"), "--output", str(tmp_path / "out")]
    code, out, err = run_cli(args)
    assert code == 2 and out == ""
    assert err.startswith("error: --reproduce ") and "no such file" in err and len(err.splitlines()) == 1
    # an option without its value is found by the parser before any command context exists
    code, _, err = run_cli(["evaluate", "--brand", "acme", "--candidate"])
    assert code == 2 and err.splitlines()[1].startswith("  usage: brandtune evaluate [OPTIONS]"), err
    with pytest.raises(GenerationError, match="no such file"):  # last: --debug stays set in this process
        run(["--debug", *args])


COMMANDS = (
    "ingest", "train", "demo", "register", "promote", "rollback", "pull", "evaluate", "generate", "mlflow-ui", "ui",
    "doctor", "base", "models",
)  # fmt: skip


def test_help_lists_every_command_and_group(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per command
    code, out, err = run_cli(["--help"])
    assert code == 0 and err == ""
    rows = [m[1] for line in out.splitlines() if (m := re.match(r"│ (\S+)\s{2,}\S", line))]
    assert [name for name in rows if name in COMMANDS] == list(COMMANDS)  # all of them, in this order
    code, out, _ = run_cli(["base", "--help"])
    assert code == 0 and all(name in out for name in ("list", "export", "build-tiny", "sample"))
    code, out, _ = run_cli(["models", "--help"])
    assert code == 0 and "list" in out


def test_python_dash_m_runs_the_same_app() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "brandtune.cli", "train", "--bogus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: No such option: --bogus"), proc.stderr
