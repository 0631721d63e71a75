"""Evaluation: render fixed prompts x seeds for candidate, champion and base, score them, apply the promotion gate.

The stage's entry point is :mod:`brandtune.evaluation.job`: :func:`evaluate` runs an :class:`EvalConfig` and
returns an :class:`EvalOutcome` (metrics, the gate's :class:`GateResult`, the report, the MLflow run, whether
``@champion`` moved). The parts it is made of:

- :mod:`brandtune.evaluation.metrics`: per-image and per-set metrics on PIL images / numpy arrays
  (palette adherence, colour distribution, similarity to references, diversity, technical checks).
- :mod:`brandtune.evaluation.model_metrics`: CLIP-T, CLIP-I, DINO, FID/KID from local weights only (imports torch
  and transformers inside functions).
- :mod:`brandtune.evaluation.gate`: the promotion gate (:func:`evaluate_gate`) as pure logic on metric dictionaries.
- :mod:`brandtune.evaluation.report`: the report's data, bootstrap confidence intervals and aggregation;
  :mod:`brandtune.evaluation.report_html` writes it as ``report.json`` and ``report.html``.

The names below are imported on first use, so ``import brandtune.evaluation`` loads nothing heavy.

Example:
    >>> from brandtune.evaluation import EvalConfig, evaluate
    >>> outcome = evaluate(EvalConfig(brand="acme", candidate="candidate", against="champion"))
    >>> outcome.gate.passed, outcome.promoted
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brandtune.config import EvalConfig
    from brandtune.evaluation.gate import GateResult, evaluate_gate
    from brandtune.evaluation.job import EvalOutcome, evaluate

__all__ = ["EvalConfig", "EvalOutcome", "GateResult", "evaluate", "evaluate_gate"]


def __getattr__(name: str) -> Any:
    if name == "EvalConfig":
        from brandtune.config import EvalConfig

        return EvalConfig
    if name in ("EvalOutcome", "evaluate"):
        from brandtune.evaluation import job

        return getattr(job, name)
    if name in ("GateResult", "evaluate_gate"):
        from brandtune.evaluation import gate

        return getattr(gate, name)
    raise AttributeError(f"module 'brandtune.evaluation' has no attribute {name!r}")
