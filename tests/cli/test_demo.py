"""``brandtune demo`` (brandtune.cli.demo): a wrong brand is one line before Prefect starts, and the campaign comes
from the champion when there is one (the whole demo runs in ``make demo``: minutes, too slow for the suite)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from brandtune.cli.demo import _campaign_model

RunCli = Callable[[list[str]], tuple[int, str, str]]


def test_a_wrong_brand_is_one_line_and_starts_nothing(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "flows.retrain", raising=False)  # whatever ran before in this process
    code, out, err = run_cli(["demo", "--brand", "nosuch"])
    assert code == 2 and out == ""
    assert err.startswith("error: brand 'nosuch': ") and "acme" in err and len(err.splitlines()) == 1, err
    assert "flows.retrain" not in sys.modules  # refused before the flows (and Prefect) were imported


def test_the_campaign_model() -> None:
    promoted = {"promoted": True, "champion_before": "1", "version": "2"}
    held_back = {"promoted": False, "champion_before": "1", "version": "2"}
    first = {"promoted": False, "champion_before": None, "version": "1"}
    assert _campaign_model(promoted) == ("champion", "2")
    assert _campaign_model(held_back) == ("champion", "1")
    assert _campaign_model(first) == ("1", "1")
