"""The promotion gate: the first champion against the base model (paired bootstrap), comparisons with the champion,
absolute bars as a brand's opt-in, explanations, config validation."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from brandtune.config import BrandSpec, GateConfig, GateRule, default_rules
from brandtune.errors import ConfigError
from brandtune.evaluation.gate import evaluate_gate
from brandtune.evaluation.report import ImageRow, aggregate

PALETTE_VS_BASE = "palette_delta_e improve_by vs base"
TECH_VS_BASE = "technical_ok no_regression vs base"


def _rules(result):
    return {r.rule: r for r in result.rules}


def suite(
    gains: Sequence[float] | float,
    *,
    spread: float = 4.0,
    noise: float = 0.5,
    prompts: int = 4,
    seeds: int = 4,
    candidate_ok: float = 1.0,
    seed: int = 0,
) -> tuple[list[ImageRow], dict[str, dict[str, float]]]:
    """Rows of a candidate and the base model on the same prompts x seeds, and their means.

    The base's palette distance varies a lot between images (``spread``: prompts and seeds differ); the candidate's
    is the base's for the same image minus ``gains`` (one per image, or the same for all) plus ``noise``.
    """
    rng = np.random.default_rng(seed)
    n = prompts * seeds
    gain = np.broadcast_to(np.asarray(gains, dtype=float), (n,))
    rows = []
    for i, (pi, s) in enumerate((pi, s) for pi in range(prompts) for s in range(seeds)):
        base = 20.0 + rng.normal(0, spread)
        cand = base - gain[i] + rng.normal(0, noise)
        ok = 1.0 if i < round(candidate_ok * n) else 0.0
        for model, value, tech in (("base", base, 1.0), ("candidate", cand, ok)):
            metrics = {"palette_delta_e": float(value), "technical_ok": tech}
            rows.append(
                ImageRow(model=model, prompt_index=pi, seed=s, image=f"{model}/{i}.png", metrics=metrics)
            )
    means = {k: {m: v["mean"] for m, v in ms.items()} for k, ms in aggregate(rows).items()}
    return rows, means


def first_champion(rows: list[ImageRow], means: dict, config: GateConfig | None = None, **kwargs: object):
    """The gate with no champion yet, the base model in the evaluation."""
    return evaluate_gate(
        means["candidate"], None, config, base=means["base"], per_image=rows, brand="acme", **kwargs
    )


def test_default_gate_passes_a_better_candidate() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    result = evaluate_gate({"palette_delta_e": 8.0, "technical_ok": 1.0}, champion)
    assert result.passed
    assert result.has_champion
    statuses = {r.rule: r.status for r in result.rules}
    assert statuses == {
        PALETTE_VS_BASE: "skipped",  # a champion exists: the base rules judge the first champion only
        TECH_VS_BASE: "skipped",
        "palette_delta_e no_regression": "pass",
        "technical_ok no_regression": "pass",
    }
    assert result.summary() == "PASS: 2/2 rules passed (2 skipped: judged against the champion)"


def test_each_failing_rule_is_named_with_values() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    result = evaluate_gate({"palette_delta_e": 16.5, "technical_ok": 0.75}, champion)
    assert not result.passed
    failed = {r.rule for r in result.failed}
    assert failed == {
        "palette_delta_e no_regression",
        "technical_ok no_regression",
    }  # no absolute bar by default
    regression = _rules(result)["palette_delta_e no_regression"]
    assert (regression.candidate, regression.champion, regression.threshold) == (16.5, 10.0, 12.0)
    assert "champion 10" in regression.reason and "16.5 > 12" in regression.reason
    assert regression.explanation.startswith("The new adapter is worse than the champion")
    summary = result.summary()
    assert summary.startswith("FAIL: 2/2") and "palette_delta_e no_regression" in summary
    assert "\n" not in summary


def test_within_tolerance_passes_and_only_the_regressing_rule_fails() -> None:
    champion = {"palette_delta_e": 10.0, "technical_ok": 1.0}
    ok = evaluate_gate({"palette_delta_e": 11.9, "technical_ok": 1.0}, champion)
    assert ok.passed
    bad = evaluate_gate({"palette_delta_e": 12.1, "technical_ok": 1.0}, champion)
    assert [r.rule for r in bad.failed] == ["palette_delta_e no_regression"]


def test_first_champion_passes_on_a_consistent_improvement() -> None:
    rows, means = suite(2.5)
    result = first_champion(rows, means)
    assert result.passed and not result.has_champion, result.summary()
    palette = _rules(result)[PALETTE_VS_BASE]
    assert (palette.status, palette.against, palette.pairs) == ("pass", "base", 16)
    assert palette.base == pytest.approx(means["base"]["palette_delta_e"])
    assert palette.candidate == pytest.approx(means["candidate"]["palette_delta_e"])
    assert 0 < palette.ci_low <= palette.improvement <= palette.ci_high
    assert palette.improvement == pytest.approx(
        means["base"]["palette_delta_e"] - means["candidate"]["palette_delta_e"]
    )
    assert _rules(result)[TECH_VS_BASE].status == "pass"
    assert result.summary() == "PASS: 2/2 rules passed (2 skipped: no champion)"
    # deterministic: the same images give the same interval
    again = _rules(first_champion(rows, means))[PALETTE_VS_BASE]
    assert (again.ci_low, again.ci_high) == (palette.ci_low, palette.ci_high)


def test_pairing_finds_an_improvement_the_two_means_intervals_hide() -> None:
    """Images differ far more between prompts and seeds than the adapter changes them: each model's own interval
    overlaps the other's, but the per-image differences are consistently positive."""
    rows, means = suite(1.0, spread=5.0, noise=0.3)
    stats = aggregate(rows)
    cand, base = stats["candidate"]["palette_delta_e"], stats["base"]["palette_delta_e"]
    assert cand["ci_high"] > base["ci_low"]  # unpaired, it would look like chance
    palette = _rules(first_champion(rows, means))[PALETTE_VS_BASE]
    assert palette.status == "pass" and palette.ci_low > 0


def test_first_champion_fails_when_the_interval_straddles_zero() -> None:
    gains = [3.0, -3.0] * 8  # better on half the images, worse on the other half: no consistent effect
    rows, means = suite(gains, noise=0.2)
    result = first_champion(rows, means)
    palette = _rules(result)[PALETTE_VS_BASE]
    assert not result.passed and [r.rule for r in result.failed] == [PALETTE_VS_BASE]
    assert palette.ci_low < 0 < palette.ci_high
    assert "not reliably better than the base model" in palette.explanation
    assert "may be chance" in palette.explanation
    assert PALETTE_VS_BASE in result.summary()


def test_first_champion_fails_when_worse_than_the_base() -> None:
    rows, means = suite(-2.0)
    result = first_champion(rows, means)
    palette = _rules(result)[PALETTE_VS_BASE]
    assert palette.status == "fail" and palette.ci_high < 0
    assert palette.explanation.startswith("The new adapter is worse than the base model on 16 images")


def test_first_champion_without_the_base_model_fails_and_says_to_include_it() -> None:
    rows, means = suite(2.5)
    cand_rows = [r for r in rows if r.model == "candidate"]
    result = evaluate_gate(means["candidate"], None, per_image=cand_rows)
    assert not result.passed
    assert {r.rule for r in result.failed} == {PALETTE_VS_BASE, TECH_VS_BASE}
    for outcome in result.failed:
        assert "include_base" in outcome.reason
        assert "base model was not part of this evaluation" in outcome.explanation
    assert "include_base" in result.summary()


def test_paired_rule_without_matching_images_fails() -> None:
    rows, means = suite(2.5)
    shifted = [r.model_copy(update={"seed": r.seed + 100}) if r.model == "base" else r for r in rows]
    for per_image in (None, shifted):
        palette = _rules(evaluate_gate(means["candidate"], None, base=means["base"], per_image=per_image))
        assert palette[PALETTE_VS_BASE].status == "fail"
        assert "matched by prompt and seed" in palette[PALETTE_VS_BASE].reason


def test_margin_is_held_against_the_low_end_of_the_interval() -> None:
    rows, means = suite(2.5)
    palette = _rules(first_champion(rows, means))[PALETTE_VS_BASE]
    low = palette.ci_low
    below = first_champion(rows, means, GateConfig(rules=default_rules(palette_margin=low - 0.1)))
    assert _rules(below)[PALETTE_VS_BASE].status == "pass"
    above = first_champion(rows, means, GateConfig(rules=default_rules(palette_margin=low + 0.1)))
    outcome = _rules(above)[PALETTE_VS_BASE]
    assert outcome.status == "fail" and outcome.threshold == pytest.approx(low + 0.1)
    assert "not by the required" in outcome.explanation


def test_technical_failures_are_judged_against_the_base() -> None:
    rows, means = suite(
        2.5, candidate_ok=0.75
    )  # 4 of 16 candidate images fail the technical checks; base: none
    result = first_champion(rows, means)
    assert [r.rule for r in result.failed] == [TECH_VS_BASE]
    tech = _rules(result)[TECH_VS_BASE]
    assert (tech.candidate, tech.base) == (0.75, 1.0)
    assert tech.explanation.startswith("The new adapter is worse than the base model")


def test_missing_or_nan_metric_fails() -> None:
    rows, means = suite(2.5)
    result = evaluate_gate({"technical_ok": 1.0}, None, base=means["base"], per_image=rows)
    outcome = _rules(result)[PALETTE_VS_BASE]
    assert outcome.status == "fail" and "missing" in outcome.reason
    nan = evaluate_gate(
        {"palette_delta_e": math.nan, "technical_ok": 1.0}, None, base=means["base"], per_image=rows
    )
    assert not nan.passed and "finite" in _rules(nan)[PALETTE_VS_BASE].reason
    bar = GateConfig(rules=[GateRule(metric="palette_delta_e", comparison="max", threshold=15.0)])
    absent = evaluate_gate({"technical_ok": 1.0}, None, bar)
    assert not absent.passed and "Cannot judge" in absent.rules[0].explanation


def test_every_outcome_is_explained_in_plain_language() -> None:
    rows, means = suite(2.5)
    champion = {"palette_delta_e": 19.0, "technical_ok": 1.0}
    for result in (first_champion(rows, means), evaluate_gate(means["candidate"], champion)):
        for outcome in result.rules:
            assert (
                outcome.explanation and outcome.explanation[0].isupper() and outcome.explanation.endswith(".")
            )
            assert "_" not in outcome.explanation  # words, not metric identifiers
    palette = _rules(first_champion(rows, means))[PALETTE_VS_BASE]
    assert palette.explanation.startswith(
        "The new adapter's product colours are closer to the acme palette than the base model's on 16 images: "
        "palette distance "
    )
    assert "95% interval of the improvement" in palette.explanation


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
        (
            {"metric": "palette_share", "comparison": "no_regression", "test": "paired_bootstrap"},
            "improve_by",
        ),
        (
            {"metric": "palette_share", "comparison": "min", "threshold": 0.2, "against": "base"},
            "no 'against'",
        ),
        (
            {"metric": "palette_share", "comparison": "improve_by", "against": "base", "confidence": 1.0},
            "less than",
        ),
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


def _brand(**gate: object) -> BrandSpec:
    return BrandSpec(
        name="acme",
        trigger="acme",
        subject="bottle",
        palette=["#1fa6a0"],
        evaluation_prompts=["a photo of {trigger} {subject}"],
        gate=gate,
    )


def test_brand_without_opt_ins_gets_the_default_gate() -> None:
    assert GateConfig.for_brand(_brand()) == GateConfig()
    assert not any(r.comparison in ("min", "max") for r in GateConfig().rules)


def test_brand_opt_ins_add_absolute_bars_and_the_palette_margin() -> None:
    config = GateConfig.for_brand(
        _brand(max_palette_delta_e=15, min_technical_ok=0.9, min_palette_improvement=1.5)
    )
    rules = {r.label: r for r in config.rules}
    assert rules["palette_delta_e max"].threshold == 15.0
    assert rules["technical_ok min"].threshold == 0.9
    assert rules[PALETTE_VS_BASE].margin == 1.5
    # applied: the adapter beats the base by 2.5 but misses the brand's own bar of 15
    rows, means = suite(2.5)
    result = first_champion(rows, means, config)
    assert [r.rule for r in result.failed] == ["palette_delta_e max"]
    bar = _rules(result)["palette_delta_e max"]
    mean = means["candidate"]["palette_delta_e"]
    assert bar.explanation.startswith(f"The new adapter's palette distance is {mean:.1f} on average")
    assert "misses the bar of at most 15" in bar.explanation
    # with a champion, the absolute bars still apply; the base rules do not
    with_champion = evaluate_gate(means["candidate"], means["candidate"], config)
    assert [r.rule for r in with_champion.failed] == ["palette_delta_e max"]


@pytest.mark.parametrize(
    ("gate", "match"),
    [
        ({"max_palete_delta_e": 15}, "Extra inputs"),
        ({"max_palette_delta_e": -1}, "greater than or equal"),
        ({"min_technical_ok": 1.5}, "less than or equal"),
        ({"min_palette_improvement": "a lot"}, "valid number"),
    ],
)
def test_brand_gate_section_is_validated(gate: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _brand(**gate)


def test_explicit_eval_config_gate_wins_over_the_brand() -> None:
    from brandtune.config import EvalConfig

    brand = _brand(max_palette_delta_e=15)
    assert EvalConfig(brand="acme").gate_for(brand) == GateConfig.for_brand(brand)
    own = GateConfig(rules=[GateRule(metric="technical_ok", comparison="min", threshold=0.5)])
    assert EvalConfig(brand="acme", gate=own).gate_for(brand) == own
