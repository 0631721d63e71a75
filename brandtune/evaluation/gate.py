"""The promotion gate: does a candidate adapter's evaluation justify making it the champion?

Pure logic on metric dictionaries (``{metric: value}``, typically per-model means from
:func:`brandtune.evaluation.report.aggregate`). Each :class:`GateRule` is one of

- ``min`` / ``max``: an absolute threshold on the candidate's value (applies with or without a champion);
- ``no_regression``: the candidate may be worse than the champion by at most ``tolerance``;
- ``improve_by``: the candidate must beat the champion by at least ``margin``.

"Worse" and "better" follow the metric's direction (:data:`brandtune.evaluation.metrics.METRIC_DIRECTIONS`, or the
rule's own ``direction``). With no champion, comparison rules are skipped: the first candidate that passes the
absolute thresholds becomes champion. A metric missing from the candidate, or NaN, fails its rule.

Example:
    >>> result = evaluate_gate({"palette_delta_e": 9.0, "technical_ok": 1.0}, None, GateConfig())
    >>> result.passed, result.summary()
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from brandtune.config import StrictModel
from brandtune.evaluation.metrics import METRIC_DIRECTIONS

__all__ = ["GateConfig", "GateResult", "GateRule", "RuleOutcome", "default_rules", "evaluate_gate"]

Comparison = Literal["min", "max", "no_regression", "improve_by"]


class GateRule(StrictModel):
    """One condition a candidate must meet to be promoted."""

    metric: str = Field(description="Metric name, e.g. 'palette_delta_e' (see METRIC_DIRECTIONS).")
    comparison: Comparison = Field(
        description="'min': value >= threshold; 'max': value <= threshold; 'no_regression': not worse than the "
        "champion by more than tolerance; 'improve_by': better than the champion by at least margin."
    )
    threshold: float | None = Field(default=None, description="Absolute threshold, for 'min' and 'max' only.")
    tolerance: float = Field(
        default=0.0, ge=0, description="'no_regression': how much worse than the champion is still accepted."
    )
    margin: float = Field(
        default=0.0, ge=0, description="'improve_by': how much better than the champion it must be."
    )
    relative: bool = Field(
        default=False,
        description="Read tolerance/margin as a fraction of the champion's absolute value (0.05 = 5%).",
    )
    direction: Literal["higher", "lower"] | None = Field(
        default=None, description="Which way is better; default: the metric's entry in METRIC_DIRECTIONS."
    )
    name: str | None = Field(default=None, description="Label in reports; default: '<metric> <comparison>'.")

    @model_validator(mode="after")
    def _consistent(self) -> GateRule:
        absolute = self.comparison in ("min", "max")
        if absolute and self.threshold is None:
            raise ValueError(f"rule on {self.metric!r}: '{self.comparison}' needs a threshold")
        if not absolute and self.threshold is not None:
            raise ValueError(
                f"rule on {self.metric!r}: '{self.comparison}' compares with the champion and takes no "
                "threshold; use tolerance (no_regression) or margin (improve_by)"
            )
        if self.comparison == "no_regression" and self.margin:
            raise ValueError(f"rule on {self.metric!r}: 'no_regression' takes tolerance, not margin")
        if self.comparison == "improve_by" and self.tolerance:
            raise ValueError(f"rule on {self.metric!r}: 'improve_by' takes margin, not tolerance")
        if not absolute and self.direction is None and self.metric not in METRIC_DIRECTIONS:
            raise ValueError(
                f"rule on {self.metric!r}: unknown metric direction; set direction: higher or lower"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.metric} {self.comparison}"

    @property
    def better(self) -> Literal["higher", "lower"]:
        return self.direction or METRIC_DIRECTIONS.get(self.metric, "higher")


def default_rules() -> list[GateRule]:
    """Defaults for brand imagery (metric means over the prompt x seed suite).

    - ``palette_delta_e`` at most 15 (CIEDE2000): the product shows the brand's colours at all. This is the bar
      for the first champion; on the sample brand, the acme bottle scores ~5-11 and other products ~19-33.
    - ``technical_ok`` at least 0.9: at most one image in ten may be black, NaN, clipped or flat.
    - ``palette_delta_e`` no worse than the champion's by more than 2.0 (about a just-noticeable difference).
    - ``technical_ok`` no worse than the champion's.
    """
    return [
        GateRule(metric="palette_delta_e", comparison="max", threshold=15.0),
        GateRule(metric="technical_ok", comparison="min", threshold=0.9),
        GateRule(metric="palette_delta_e", comparison="no_regression", tolerance=2.0),
        GateRule(metric="technical_ok", comparison="no_regression", tolerance=0.0),
    ]


class GateConfig(StrictModel):
    """The promotion gate: every rule must pass (rules that need a champion are skipped without one)."""

    rules: list[GateRule] = Field(
        default_factory=default_rules, min_length=1, description="Rules; all must pass to promote."
    )


class RuleOutcome(BaseModel):
    """How one rule fared."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(description="The rule's label.")
    metric: str
    comparison: Comparison
    status: Literal["pass", "fail", "skipped"]
    candidate: float | None = Field(description="The candidate's value (None when missing).")
    champion: float | None = Field(default=None, description="The champion's value, for comparison rules.")
    threshold: float | None = Field(default=None, description="The bound the candidate was held to.")
    reason: str = Field(description="One line: why it passed, failed or was skipped.")

    @property
    def passed(self) -> bool:
        return self.status != "fail"


class GateResult(BaseModel):
    """The gate's decision with one :class:`RuleOutcome` per rule, in config order."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    has_champion: bool
    rules: list[RuleOutcome]

    @property
    def failed(self) -> list[RuleOutcome]:
        return [r for r in self.rules if r.status == "fail"]

    def summary(self) -> str:
        """One line, e.g. ``PASS: 2/2 rules passed (2 skipped: no champion)`` or ``FAIL: ...; ...``."""
        checked = [r for r in self.rules if r.status != "skipped"]
        skipped = len(self.rules) - len(checked)
        note = f" ({skipped} skipped: no champion)" if skipped else ""
        if self.passed:
            return f"PASS: {len(checked)}/{len(checked)} rules passed{note}"
        reasons = "; ".join(f"{r.rule}: {r.reason}" for r in self.failed)
        return f"FAIL: {len(self.failed)}/{len(checked)} rules failed{note}: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (includes ``summary``)."""
        return {**self.model_dump(mode="json"), "summary": self.summary()}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _bound(rule: GateRule, champion: float) -> float:
    """The value the candidate must reach (improve_by) or not fall behind (no_regression)."""
    amount = rule.tolerance if rule.comparison == "no_regression" else rule.margin
    if rule.relative:
        amount *= abs(champion)
    worse_sign = 1.0 if rule.better == "lower" else -1.0
    return (
        champion + worse_sign * amount
        if rule.comparison == "no_regression"
        else champion - worse_sign * amount
    )


def _check(rule: GateRule, value: float, champion: float | None) -> tuple[bool, float, str]:
    """Returns (passed, bound, reason) for a present, finite candidate value."""
    if rule.comparison in ("min", "max"):
        bound = float(rule.threshold)  # type: ignore[arg-type]  # validated: set for min/max
        ok = value >= bound if rule.comparison == "min" else value <= bound
        op = (">=" if ok else "<") if rule.comparison == "min" else ("<=" if ok else ">")
        return ok, bound, f"{_fmt(value)} {op} threshold {_fmt(bound)}"
    assert champion is not None
    bound = _bound(rule, champion)
    ok = value <= bound if rule.better == "lower" else value >= bound
    op = ("<=" if ok else ">") if rule.better == "lower" else (">=" if ok else "<")
    amount = rule.tolerance if rule.comparison == "no_regression" else rule.margin
    what = "tolerance" if rule.comparison == "no_regression" else "margin"
    rel = f"{amount:.0%}" if rule.relative else _fmt(amount)
    return (
        ok,
        bound,
        f"{_fmt(value)} {op} {_fmt(bound)} (champion {_fmt(champion)}, {what} {rel}, {rule.better} is better)",
    )


def _outcome(rule: GateRule, candidate: dict[str, float], champion: dict[str, float] | None) -> RuleOutcome:
    base = {"rule": rule.label, "metric": rule.metric, "comparison": rule.comparison}
    comparative = rule.comparison in ("no_regression", "improve_by")
    champ_value = champion.get(rule.metric) if (champion is not None and comparative) else None
    value = candidate.get(rule.metric)
    if comparative and champion is None:
        return RuleOutcome(**base, status="skipped", candidate=value, reason="no champion to compare with")
    if value is None or not math.isfinite(value):
        why = "missing from the candidate's metrics" if value is None else "not a finite number"
        return RuleOutcome(**base, status="fail", candidate=None, reason=f"{rule.metric} is {why}")
    if comparative and (champ_value is None or not math.isfinite(champ_value)):
        return RuleOutcome(
            **base,
            status="skipped",
            candidate=value,
            reason=f"the champion has no finite {rule.metric} (evaluated before this metric existed?)",
        )
    ok, bound, reason = _check(rule, float(value), champ_value)
    return RuleOutcome(
        **base,
        status="pass" if ok else "fail",
        candidate=float(value),
        champion=champ_value,
        threshold=bound,
        reason=reason,
    )


def evaluate_gate(
    candidate: dict[str, float], champion: dict[str, float] | None, config: GateConfig | None = None
) -> GateResult:
    """Apply the gate's rules to a candidate's metrics.

    Args:
        candidate: The candidate's metrics (e.g. means over the evaluation suite).
        champion: The current champion's metrics from the same suite, or None when there is no champion yet.
        config: The rules (default: :func:`default_rules`).

    Returns:
        A :class:`GateResult`; ``passed`` is True when no rule failed.
    """
    config = config or GateConfig()
    outcomes = [_outcome(rule, candidate, champion) for rule in config.rules]
    return GateResult(
        passed=all(o.passed for o in outcomes), has_champion=champion is not None, rules=outcomes
    )
