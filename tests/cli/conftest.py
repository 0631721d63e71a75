"""Fixtures of the CLI tests: run ``brandtune`` in this process through its real entry point."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from brandtune.cli import run


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """Run the CLI in this process (``brandtune.cli.run``); return its exit code, stdout and stderr."""

    def _run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            run(args)
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return _run
