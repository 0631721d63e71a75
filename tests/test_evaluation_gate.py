"""The promotion gate: absolute thresholds, comparisons with the champion, first champion, config validation."""

from __future__ import annotations

import json
import math

import pytest

from brandtune.errors import ConfigError
from brandtune.evaluation.gate import GateConfig, GateRule, evaluate_gate


def _rules(result):
    return {r.rule: r for r in result.rules}


def test_default_gate_passes_a_better_candidate() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    result = evaluate_gate({"palette_delta_e": 8.0, "technical_ok": 1.0}, champion)
    assert result.passed
    assert result.has_champion
    assert all(r.status == "pass" for r in result.rules)
    assert result.summary().startswith("PASS: 4/4")


def test_each_failing_rule_is_named_with_values() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    result = evaluate_gate({"palette_delta_e": 16.5, "technical_ok": 0.75}, champion)
    assert not result.passed
    failed = {r.rule for r in result.failed}
    assert failed == {
        "palette_delta_e max",
        "technical_ok min",
        "palette_delta_e no_regression",
        "technical_ok no_regression",
    }
    regression = _rules(result)["palette_delta_e no_regression"]
    assert (regression.candidate, regression.champion, regression.threshold) == (16.5, 10.0, 12.0)
    assert "champion 10" in regression.reason and "16.5 > 12" in regression.reason
    summary = result.summary()
    assert summary.startswith("FAIL: 4/4") and "palette_delta_e no_regression" in summary
    assert "\n" not in summary


def test_within_tolerance_passes_and_only_the_regressing_rule_fails() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    ok = evaluate_gate({"palette_delta_e": 11.9, "technical_ok": 1.0}, champion)
    assert ok.passed
    bad = evaluate_gate({"palette_delta_e": 12.1, "technical_ok": 1.0}, champion)
    assert [r.rule for r in bad.failed] == ["palette_delta_e no_regression"]


def test_no_champion_applies_only_absolute_rules() -> None:
    result = evaluate_gate({"palette_delta_e": 9.0, "technical_ok": 1.0}, None)
    assert result.passed and not result.has_champion
    statuses = {r.rule: r.status for r in result.rules}
    assert statuses["palette_delta_e no_regression"] == "skipped"
    assert statuses["palette_delta_e max"] == "pass"
    assert "2 skipped: no champion" in result.summary()
    first_bad = evaluate_gate({"palette_delta_e": 20.0, "technical_ok": 1.0}, None)
    assert not first_bad.passed
    assert [r.rule for r in first_bad.failed] == ["palette_delta_e max"]


def test_missing_or_nan_metric_fails() -> None:
    result = evaluate_gate({"technical_ok": 1.0}, None)
    outcome = _rules(result)["palette_delta_e max"]
    assert outcome.status == "fail" and "missing" in outcome.reason
    nan = evaluate_gate({"palette_delta_e": math.nan, "technical_ok": 1.0}, None)
    assert not nan.passed and "finite" in _rules(nan)["palette_delta_e max"].reason


def test_champion_without_the_metric_skips_the_comparison() -> None:
    result = evaluate_gate({"palette_delta_e": 9.0, "technical_ok": 1.0}, {"technical_ok": 1.0})
    assert result.passed
    assert _rules(result)["palette_delta_e no_regression"].status == "skipped"


def test_improve_by_relative_and_absolute_follow_direction() -> None:
    config = GateConfig(
        rules=[
            GateRule(metric="clip_t", comparison="improve_by", margin=0.05, relative=True),
            GateRule(metric="fid", comparison="improve_by", margin=1.0, name="fid drops by 1"),
        ]
    )
    champion = {"clip_t": 20.0, "fid": 50.0}
    good = evaluate_gate({"clip_t": 21.0, "fid": 49.0}, champion, config)
    assert good.passed, good.summary()
    assert _rules(good)["clip_t improve_by"].threshold == pytest.approx(21.0)
    bad = evaluate_gate({"clip_t": 20.5, "fid": 49.5}, champion, config)
    assert {r.rule for r in bad.failed} == {"clip_t improve_by", "fid drops by 1"}


def test_explicit_direction_for_unknown_metric() -> None:
    rule = GateRule(metric="wordmark_ocr", comparison="no_regression", direction="higher", tolerance=0.1)
    result = evaluate_gate({"wordmark_ocr": 0.85}, {"wordmark_ocr": 0.9}, GateConfig(rules=[rule]))
    assert result.passed
    with pytest.raises(ValueError, match="direction"):
        GateRule(metric="wordmark_ocr", comparison="no_regression")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "palette_share", "comparison": "min"}, "needs a threshold"),
        ({"metric": "palette_share", "comparison": "no_regression", "threshold": 0.2}, "takes no threshold"),
        ({"metric": "palette_share", "comparison": "no_regression", "margin": 0.2}, "tolerance, not margin"),
        ({"metric": "palette_share", "comparison": "min", "threshold": 0.2, "typo": 1}, "Extra inputs"),
    ],
)
def test_rule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GateRule(**kwargs)


def test_config_loads_from_yaml(tmp_path) -> None:
    from brandtune.config import load_yaml_model

    path = tmp_path / "gate.yaml"
    path.write_text("rules:\n  - {metric: palette_share, comparison: min, threshold: 0.3}\n")
    config = load_yaml_model(GateConfig, path)
    assert config.rules[0].threshold == 0.3
    path.write_text("rules:\n  - {metric: palette_share, comparison: minimum}\n")
    with pytest.raises(ConfigError, match="comparison"):
        load_yaml_model(GateConfig, path)


def test_to_dict_is_json_ready() -> None:
    result = evaluate_gate(
        {"palette_delta_e": 9.0, "technical_ok": 1.0}, {"palette_delta_e": 8.0, "technical_ok": 1.0}
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["summary"] == result.summary()
    assert [r["rule"] for r in data["rules"]] == [r.rule for r in result.rules]
