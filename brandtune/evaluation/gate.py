"""The promotion gate: does a candidate adapter's evaluation justify making it the champion?

Pure logic on metric dictionaries (``{metric: value}``, per-model means from
:func:`brandtune.evaluation.report.aggregate`) and, for paired rules, the per-image rows the means came from. The
rules themselves are config (:class:`~brandtune.config.GateConfig`, :func:`~brandtune.config.default_rules`); each
:class:`~brandtune.config.GateRule` is one of

- ``min`` / ``max``: an absolute bar on the candidate's mean (with or without a champion). Off by default: a brand
  opts in through ``gate:`` in its brand.yaml (:class:`brandtune.config.BrandGate`);
- ``no_regression``: the candidate may be worse than the reference by at most ``tolerance``;
- ``improve_by``: the candidate must beat the reference by at least ``margin``; with ``test: paired_bootstrap``,
  by a margin a paired bootstrap interval supports (below).

The reference (``against``) is the current champion, or the base model without adapter. Champion rules are skipped
while there is no champion; base rules judge the *first* champion only (with a champion, the champion rules
decide). A first-champion rule whose evaluation has no base model fails: without it nothing shows the adapter
helps. "Worse" and "better" follow the metric's direction (:data:`~brandtune.config.METRIC_DIRECTIONS`,
or the rule's own ``direction``). A metric missing from the candidate, or NaN, fails its rule.

Why a paired bootstrap for the first champion. The candidate and the base model draw the same prompts with the
same seeds, so image *i* of one and image *i* of the other share everything but the adapter. Comparing the two
means, each with its own interval, leaves the prompt-to-prompt and seed-to-seed spread in both intervals. Pairing
the images by ``(prompt_index, seed)`` and resampling the per-image improvements (reference minus candidate when
lower is better) cancels whatever spread the two share; where an adapter redraws the images so much that they
share little (the demo's LoRA on builtin:tiny), the paired interval is about as wide as an unpaired one, so
nothing is lost. The rule passes when the whole interval (95% by default) of the mean improvement lies above zero,
and above ``margin`` when one is set: the evaluation then supports "better by at least ``margin``", not only
"better on average". The resampling is :func:`~brandtune.evaluation.report.bootstrap_ci`'s percentile bootstrap
with a fixed seed, so the same images always give the same decision.

Every :class:`RuleOutcome` carries a one-line technical ``reason`` and a plain-language ``explanation`` for the
people who decide on a release.

Example:
    >>> result = evaluate_gate({"palette_delta_e": 9.0, "technical_ok": 1.0}, {"palette_delta_e": 9.5,
    ...                        "technical_ok": 1.0})
    >>> result.passed, result.summary()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from brandtune.config import Comparison, GateConfig, GateRule, Reference

if TYPE_CHECKING:
    from brandtune.evaluation.report import ImageRow

__all__ = ["GateResult", "RuleOutcome", "evaluate_gate"]

#: Bootstrap resamples of a paired rule (seeded: the same images give the same interval).
PAIRED_RESAMPLES = 2000


class RuleOutcome(BaseModel):
    """How one rule fared."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(description="The rule's label.")
    metric: str
    comparison: Comparison
    against: Reference | None = Field(default=None, description="Reference model of a comparison rule.")
    status: Literal["pass", "fail", "skipped"]
    candidate: float | None = Field(description="The candidate's mean (None when missing).")
    champion: float | None = Field(default=None, description="The champion's mean, for champion rules.")
    base: float | None = Field(default=None, description="The base model's mean, for base rules.")
    threshold: float | None = Field(default=None, description="The bound the candidate was held to.")
    improvement: float | None = Field(
        default=None, description="Paired rules: mean per-image improvement over the reference (> 0: better)."
    )
    ci_low: float | None = Field(
        default=None, description="Paired rules: low end of the improvement's interval."
    )
    ci_high: float | None = Field(default=None, description="Paired rules: high end of the interval.")
    pairs: int | None = Field(default=None, description="Paired rules: images matched by prompt and seed.")
    reason: str = Field(description="One technical line: why it passed, failed or was skipped.")
    explanation: str = Field(default="", description="The same in plain language, for a brand manager.")

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
        whys = sorted({_skip_tag(r, self.has_champion) for r in self.rules if r.status == "skipped"})
        skipped = len(self.rules) - len(checked)
        note = f" ({skipped} skipped: {', '.join(whys)})" if skipped else ""
        if self.passed:
            return f"PASS: {len(checked)}/{len(checked)} rules passed{note}"
        reasons = "; ".join(f"{r.rule}: {r.reason}" for r in self.failed)
        return f"FAIL: {len(self.failed)}/{len(checked)} rules failed{note}: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (includes ``summary``)."""
        return {**self.model_dump(mode="json"), "summary": self.summary()}


def _skip_tag(outcome: RuleOutcome, has_champion: bool) -> str:
    if outcome.against == "champion" and not has_champion:
        return "no champion"
    if outcome.against == "base" and has_champion:
        return "judged against the champion"
    return "metric not measured for the reference"


# ----------------------------------------------------------------------------------------------------------------
# Wording


#: Metric -> (what it is called, a claim that the new adapter beats ``{other}``). ``{brand}`` is the brand's name.
_WORDS: dict[str, tuple[str, str]] = {
    "palette_delta_e": (
        "palette distance",
        "The new adapter's product colours are closer to the {brand} palette than {other}'s",
    ),
    "palette_share": (
        "palette share",
        "More of the new adapter's coloured pixels are {brand} colours than {other}'s",
    ),
    "color_hist_distance": (
        "colour-mix difference",
        "The new adapter's colour mix is closer to the {brand} photos than {other}'s",
    ),
    "ref_ssim": (
        "similarity to the brand photos",
        "The new adapter's images look more like the {brand} photos than {other}'s",
    ),
    "technical_ok": (
        "share of technically sound images",
        "More of the new adapter's images are technically sound than {other}'s",
    ),
}


def _num(value: float) -> str:
    """A number for people: one decimal from 1 up, two significant digits below."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _noun(metric: str) -> str:
    return _WORDS.get(metric, (metric, ""))[0]


def _claim(rule: GateRule, other: str, brand: str) -> str:
    template = (
        _WORDS.get(rule.metric, ("", ""))[1] or f"The new adapter does better on {rule.metric} than {{other}}"
    )
    return template.format(brand=brand, other=other)


def _other(against: Reference) -> str:
    return "the champion" if against == "champion" else "the base model"


def _absolute_words(rule: GateRule, value: float, ok: bool) -> str:
    bound = f"{'at least' if rule.comparison == 'min' else 'at most'} {float(rule.threshold or 0.0):g}"
    verdict = "meets" if ok else "misses"
    return f"The new adapter's {_noun(rule.metric)} is {_num(value)} on average: it {verdict} the bar of {bound}."


def _mean_words(rule: GateRule, value: float, ref: float, bound: float, ok: bool, brand: str) -> str:
    other = _other(rule.against)
    noun = _noun(rule.metric)
    numbers = f"{noun} {_num(ref)} for {other}, {_num(value)} for the new adapter"
    if rule.comparison == "no_regression":
        allowed = f" (up to {_num(abs(bound - ref))} worse is accepted)" if bound != ref else ""
        if ok:
            return f"The new adapter is no worse than {other}: {numbers}{allowed}."
        return f"The new adapter is worse than {other}: {numbers}{allowed}."
    if ok:
        return f"{_claim(rule, other, brand)} by the required margin: {numbers} (needed {_num(bound)})."
    return f"The new adapter does not beat {other} by the required margin: {numbers} (needed {_num(bound)})."


# ----------------------------------------------------------------------------------------------------------------
# Checks


def _bound(rule: GateRule, reference: float) -> float:
    """The value the candidate must reach (improve_by) or not fall behind (no_regression)."""
    amount = rule.tolerance if rule.comparison == "no_regression" else rule.margin
    if rule.relative:
        amount *= abs(reference)
    worse_sign = 1.0 if rule.better == "lower" else -1.0
    return (
        reference + worse_sign * amount
        if rule.comparison == "no_regression"
        else reference - worse_sign * amount
    )


def _check_absolute(rule: GateRule, value: float) -> tuple[bool, float, str]:
    bound = float(rule.threshold)  # type: ignore[arg-type]  # validated: set for min/max
    ok = value >= bound if rule.comparison == "min" else value <= bound
    op = (">=" if ok else "<") if rule.comparison == "min" else ("<=" if ok else ">")
    return ok, bound, f"{_fmt(value)} {op} threshold {_fmt(bound)}"


def _check_means(rule: GateRule, value: float, reference: float) -> tuple[bool, float, str]:
    bound = _bound(rule, reference)
    ok = value <= bound if rule.better == "lower" else value >= bound
    op = ("<=" if ok else ">") if rule.better == "lower" else (">=" if ok else "<")
    amount = rule.tolerance if rule.comparison == "no_regression" else rule.margin
    what = "tolerance" if rule.comparison == "no_regression" else "margin"
    rel = f"{amount:.0%}" if rule.relative else _fmt(amount)
    return (
        ok,
        bound,
        f"{_fmt(value)} {op} {_fmt(bound)} ({rule.against} {_fmt(reference)}, {what} {rel}, "
        f"{rule.better} is better)",
    )


def _pairs(
    rows: Iterable[ImageRow | Mapping[str, Any]], reference: str, metric: str
) -> list[tuple[float, float]]:
    """(candidate, reference) values of ``metric`` for images of both models with the same (prompt, seed, aspect)."""
    by_key: dict[str, dict[tuple[int, int, str], float]] = {"candidate": {}, reference: {}}
    for row in rows:
        model, pi, seed, aspect, metrics = (
            (row["model"], row["prompt_index"], row["seed"], row.get("aspect"), row["metrics"])
            if isinstance(row, Mapping)
            else (row.model, row.prompt_index, row.seed, row.aspect, row.metrics)
        )
        value = metrics.get(metric)
        if model in by_key and value is not None and math.isfinite(value):
            by_key[model][(int(pi), int(seed), aspect or "")] = float(value)
    cand, ref = by_key["candidate"], by_key[reference]
    return [(cand[k], ref[k]) for k in sorted(cand.keys() & ref.keys())]


def _paired(rule: GateRule, pairs: list[tuple[float, float]], brand: str) -> dict[str, Any]:
    """The paired-bootstrap verdict as RuleOutcome fields (status, interval, reason, explanation)."""
    import numpy as np

    from brandtune.evaluation.report import bootstrap_ci

    other, noun = _other(rule.against), _noun(rule.metric)
    cand = np.array([c for c, _ in pairs])
    ref = np.array([r for _, r in pairs])
    gain = ref - cand if rule.better == "lower" else cand - ref  # per image; > 0: the candidate is better
    mean, low, high = bootstrap_ci(gain, n=PAIRED_RESAMPLES, seed=0, alpha=1.0 - rule.confidence)
    need = rule.margin * abs(float(ref.mean())) if rule.relative else rule.margin
    ok = low > need
    level = f"{rule.confidence:.0%}"
    numbers = f"{noun} {_num(float(ref.mean()))} -> {_num(float(cand.mean()))}"
    digits = 1 if max(abs(low), abs(high)) >= 1 else 2
    interval = f"{level} interval of the improvement {low:.{digits}f} to {high:.{digits}f}"
    if ok:
        words = f"{_claim(rule, other, brand)} on {len(pairs)} images: {numbers}, {interval}."
    elif high < 0:
        words = f"The new adapter is worse than {other} on {len(pairs)} images: {numbers}, {interval}."
    elif low <= 0:
        words = (
            f"The new adapter is not reliably better than {other}: on {len(pairs)} images {numbers}, but the "
            f"{interval} reaches zero, so the difference may be chance. Train longer, or with more or better "
            "photos."
        )
    else:
        words = (
            f"The new adapter is better than {other}, but not by the required {_num(need)}: on {len(pairs)} "
            f"images {numbers}, {interval}."
        )
    return {
        "status": "pass" if ok else "fail",
        "threshold": need,
        "improvement": mean,
        "ci_low": low,
        "ci_high": high,
        "pairs": len(pairs),
        "reason": f"paired improvement {_fmt(mean)} ({level} CI {_fmt(low)} to {_fmt(high)}, {len(pairs)} pairs) "
        f"{'>' if ok else '<='} margin {_fmt(need)} at its low end ({rule.against} {_fmt(float(ref.mean()))}, "
        f"candidate {_fmt(float(cand.mean()))}, {rule.better} is better)",
        "explanation": words,
    }


def _not_applicable(
    rule: GateRule, champion: Mapping[str, float] | None, has_base: bool
) -> dict[str, Any] | None:
    """Outcome fields when a comparison rule cannot be judged in this evaluation (skipped, or failed for lack of
    a base model); None when it can."""
    if not rule.compares:
        return None
    if rule.against == "champion" and champion is None:
        return {
            "status": "skipped",
            "reason": "no champion to compare with",
            "explanation": "Not checked: there is no champion yet, so the new adapter is judged against the base "
            "model instead.",
        }
    if rule.against == "base" and champion is not None:
        return {
            "status": "skipped",
            "reason": "a champion exists; this rule judges the first champion only",
            "explanation": "Not checked: there is a champion, so the new adapter is judged against it instead "
            "of the base model.",
        }
    if rule.against == "base" and not has_base:
        return {
            "status": "fail",
            "reason": "no base model in this evaluation: the first champion must beat it; evaluate with "
            "include_base: true",
            "explanation": "Cannot judge: there is no champion yet, and the first one must beat the base model, "
            "but the base model was not part of this evaluation. Run it again with the base model included.",
        }
    return None


def _judge(
    rule: GateRule, value: float, ref: float, rows: list[ImageRow | Mapping[str, Any]] | None, brand: str
) -> dict[str, Any]:
    """Outcome fields of a comparison rule whose candidate and reference means are both finite."""
    if rule.test == "paired_bootstrap":
        pairs = _pairs(rows or [], rule.against, rule.metric)
        if len(pairs) >= 2:
            return _paired(rule, pairs, brand)
        return {
            "status": "fail",
            "reason": f"the paired test needs per-image {rule.metric} of both models matched by prompt and "
            f"seed; got {len(pairs)} pairs",
            "explanation": f"Cannot judge: the images of the new adapter and {_other(rule.against)} could not "
            "be matched by prompt and seed.",
        }
    ok, bound, reason = _check_means(rule, value, ref)
    words = _mean_words(rule, value, ref, bound, ok, brand)
    return {"status": "pass" if ok else "fail", "threshold": bound, "reason": reason, "explanation": words}


def _outcome(
    rule: GateRule,
    candidate: Mapping[str, float],
    references: dict[str, Mapping[str, float] | None],
    rows: list[ImageRow | Mapping[str, Any]] | None,
    brand: str,
) -> RuleOutcome:
    head: dict[str, Any] = {"rule": rule.label, "metric": rule.metric, "comparison": rule.comparison}
    head["against"] = rule.against if rule.compares else None
    value = candidate.get(rule.metric)
    finite = float(value) if value is not None and math.isfinite(value) else None
    early = _not_applicable(rule, references["champion"], references["base"] is not None)
    if early is not None:
        return RuleOutcome(**head, candidate=finite, **early)
    noun = _noun(rule.metric)
    if finite is None:
        why = "missing from the candidate's metrics" if value is None else "not a finite number"
        words = f"Cannot judge: the evaluation has no usable {noun} for the new adapter."
        return RuleOutcome(
            **head, status="fail", candidate=None, reason=f"{rule.metric} is {why}", explanation=words
        )
    if not rule.compares:
        ok, bound, reason = _check_absolute(rule, finite)
        words = _absolute_words(rule, finite, ok)
        fields = {
            "status": "pass" if ok else "fail",
            "threshold": bound,
            "reason": reason,
            "explanation": words,
        }
        return RuleOutcome(**head, candidate=finite, **fields)
    ref = (references[rule.against] or {}).get(rule.metric)
    if ref is None or not math.isfinite(ref):
        fields = {
            "status": "skipped" if rule.against == "champion" else "fail",
            "reason": f"the {rule.against} has no finite {rule.metric} (evaluated before this metric existed?)",
            "explanation": f"{'Not checked' if rule.against == 'champion' else 'Cannot judge'}: "
            f"{_other(rule.against)} has no {noun} to compare with.",
        }
        return RuleOutcome(**head, candidate=finite, **fields)
    fields = _judge(rule, finite, float(ref), rows, brand)
    return RuleOutcome(**head, **{rule.against: float(ref)}, **{"candidate": finite, **fields})


def evaluate_gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: GateConfig | None = None,
    *,
    base: Mapping[str, float] | None = None,
    per_image: Iterable[ImageRow | Mapping[str, Any]] | None = None,
    brand: str | None = None,
) -> GateResult:
    """Apply the gate's rules to a candidate's metrics.

    Args:
        candidate: The candidate's metrics (means over the evaluation suite).
        champion: The current champion's metrics from the same suite, or None when there is no champion yet.
        config: The rules (default: :func:`brandtune.config.default_rules`).
        base: The base model's metrics from the same suite, or None when it was not evaluated.
        per_image: Per-image rows (:class:`~brandtune.evaluation.report.ImageRow` or dicts with ``model``
            ('candidate', 'champion', 'base'), ``prompt_index``, ``seed`` and ``metrics``); paired rules need them.
        brand: The brand's name for explanations (default: "the brand").

    Returns:
        A :class:`GateResult`; ``passed`` is True when no rule failed.
    """
    config = config or GateConfig()
    rows = list(per_image) if per_image is not None else None
    references = {"champion": champion, "base": base}
    name = brand or "the brand"
    outcomes = [_outcome(rule, candidate, references, rows, name) for rule in config.rules]
    return GateResult(
        passed=all(o.passed for o in outcomes), has_champion=champion is not None, rules=outcomes
    )
