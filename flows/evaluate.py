"""The ``evaluate`` flow: score a candidate adapter against the champion (and the base model), apply the gate."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from brandtune.registry import model_name
from brandtune.settings import Settings
from flows._artifacts import metric_rows, publish, run_link, version_link
from flows._params import TIMEOUTS, BrandSlug, EvaluationParams, ModelRef
from flows._tasks import evaluate_task, lineage_task


def evaluation_facts(
    settings: Settings, brand: str, outcome: Any, experiment_id: str | None
) -> list[tuple[str, str]]:
    """Summary rows for an evaluation outcome (shared with ``retrain``)."""
    name = model_name(brand)
    decision = "PASSED" if outcome.gate.passed else "FAILED"
    champion = (
        version_link(settings, name, outcome.champion_version)
        if outcome.champion_version
        else "none yet (judged against the base model)"
    )
    return [
        ("candidate", version_link(settings, name, outcome.candidate_version)),
        ("compared with champion", champion),
        ("gate", f"**{decision}**: {outcome.gate.summary()}"),
        ("promoted to @champion", "yes" if outcome.promoted else "no"),
        ("evaluation MLflow run", run_link(settings, outcome.mlflow_run_id, experiment_id)),
        ("report", f"`{outcome.report_html}`"),
    ]


def gate_markdown(outcome: Any) -> str:
    """The gate's rules as a markdown list: each rule's plain-language explanation, then its numbers."""
    rules = outcome.gate.to_dict().get("rules", [])
    lines = []
    for r in rules:
        words = r.get("explanation") or r.get("reason", "")
        lines.append(f"- **{r.get('status', '?')}** {r.get('rule', '')}: {words}")
        if r.get("explanation") and r.get("reason"):
            lines.append(f"  <br>`{r['reason']}`")
    return "## Gate\n\n" + ("\n".join(lines) or "_no rules_")


@flow(name="evaluate", log_prints=False, validate_parameters=True, timeout_seconds=TIMEOUTS.flow("evaluate"))
def evaluate_flow(
    brand: BrandSlug = "acme",
    candidate: ModelRef = "candidate",
    against: Annotated[
        str | None,
        Field(description="Alias or version to compare with (usually champion). Empty: absolute rules only."),
    ] = "champion",
    evaluation: EvaluationParams = EvaluationParams(),
    promote: Annotated[
        bool, Field(description="Move @champion to the candidate when the gate passes (off: report only).")
    ] = True,
) -> dict[str, Any]:
    """Evaluate a registered adapter against the live one, and promote it if it is better.

    Renders the brand's fixed evaluation prompts with fixed seeds for the candidate, the champion and the base
    model (same sampler for all), scores palette adherence, similarity to the reference photos, diversity and
    technical soundness, and writes a side-by-side report. When every gate rule passes and `promote` is on,
    @champion moves to the candidate (the old champion becomes @previous-champion). A failed gate moves nothing.

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml (e.g. acme).
        candidate: Adapter to judge: an alias (candidate, champion) or a version number such as 3.
        against: Alias or version to compare with, usually champion. Empty: absolute gate rules only.
        evaluation: Seeds, sampler and the promotion gate's rules.
        promote: Move @champion to the candidate when the gate passes (off: report only).
    """
    settings = Settings.from_env()
    outcome, seconds = evaluate_task(evaluation.eval_config(brand, candidate, against, promote))
    experiment_id = lineage_task(outcome.mlflow_run_id)
    publish(
        "evaluate",
        brand,
        f"Evaluation of {model_name(brand)} v{outcome.candidate_version}",
        evaluation_facts(settings, brand, outcome, experiment_id),
        metric_rows(outcome.metrics),
        gate_markdown(outcome),
    )
    return {
        "candidate_version": outcome.candidate_version,
        "champion_version": outcome.champion_version,
        "passed": outcome.gate.passed,
        "promoted": outcome.promoted,
        "mlflow_run_id": outcome.mlflow_run_id,
        "report_html": str(outcome.report_html),
        "metrics": outcome.metrics,
        "seconds": seconds,
    }
