"""The ``retrain`` flow: the whole chain, ingest -> train -> register -> evaluate -> promote if the gate passes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

from prefect import flow
from prefect.states import Completed, State
from pydantic import Field

from brandtune.registry import model_name
from brandtune.settings import Settings
from flows._approval import EXPIRED, Approval, await_approval
from flows._artifacts import markdown_table, metric_rows, publish, version_link
from flows._params import TIMEOUTS, BrandSlug, EvaluationParams, TrainingParams
from flows._tasks import evaluate_task, ingest_task, lineage_task, register_task
from flows.evaluate import evaluation_facts, gate_markdown
from flows.train import ForceParam, run_training, training_facts, unchanged_facts

if TYPE_CHECKING:
    from brandtune.evaluation.job import EvalOutcome
    from brandtune.ingest import IngestResult


@flow(name="retrain", log_prints=False, validate_parameters=True, timeout_seconds=TIMEOUTS.flow("retrain"))
def retrain_flow(
    brand: BrandSlug = "acme",
    sources: Annotated[
        list[str] | None,
        Field(
            description="Photo folders, .zip files or images on the worker. Empty: data/brands/{brand}/photos."
        ),
    ] = None,
    training: TrainingParams = TrainingParams(),
    evaluation: EvaluationParams = EvaluationParams(),
    promote: Annotated[
        bool,
        Field(description="Make the new adapter @champion when it passes the gate (off: evaluate only)."),
    ] = True,
    force: ForceParam = False,
    evaluate_unchanged: Annotated[
        bool,
        Field(
            description="When nothing changed (no training), evaluate the existing version anyway; with "
            "`promote` on it may then become @champion. Off: an unchanged version is left as it is."
        ),
    ] = False,
    require_approval: Annotated[
        bool | None,
        Field(
            description="Wait for a person to approve the promotion: a passing retrain pauses with a form in the "
            "Prefect UI (approve or reject, name, comment). Empty: the brand's automation.require_approval "
            "(brand.yaml)."
        ),
    ] = None,
    approval_timeout_hours: Annotated[
        float | None,
        Field(
            gt=0,
            le=TIMEOUTS.approval / 3600,
            description="Hours to wait for the approval; then the candidate stays unpromoted ('Approval "
            "expired'). Empty: the worker's limit (BRANDTUNE_TIMEOUT_APPROVAL_S, 72 h by default).",
        ),
    ] = None,
) -> dict[str, Any] | State:
    """Retrain a brand's adapter from its photos and release it if it is better than the live one.

    1. ingest the photos (an unchanged photo set reuses its dataset),
    2. fine-tune a LoRA adapter (log streams here; a retry of this flow run resumes from its last checkpoint),
    3. register it as a new version of `{brand}-lora` with alias @candidate,
    4. evaluate it against @champion on the brand's fixed prompts and seeds,
    5. move @champion to it when every gate rule passes (the old champion becomes @previous-champion); with
       approval required, the run first pauses until a person approves it in the UI (Resume on this run).

    When a registered version was already trained on exactly this dataset, config and base (unchanged photos and
    settings: most weeks), nothing is trained, registered or moved, and the summary says which version that is;
    `force` trains a new version anyway, `evaluate_unchanged` re-evaluates the existing one.

    The summary artifact links the MLflow runs, the model version, the metrics and the gate decision.

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml and photos/ (e.g. acme).
        sources: Photo folders, .zip files or images on the worker. Empty: data/brands/{brand}/photos.
        training: Training settings: steps, batch size, LoRA rank, learning rate, precision, GPUs, retries.
        evaluation: Seeds, sampler and the promotion gate's rules.
        promote: Make the new adapter @champion when it passes the gate (off: evaluate and report only).
        force: Train a new version even when nothing changed.
        evaluate_unchanged: When nothing changed, evaluate the existing version anyway.
        require_approval: Pause for a person's approval before promoting; empty: the brand's brand.yaml setting.
        approval_timeout_hours: How long to wait for that approval; empty: the worker's limit (72 h).
    """
    settings = Settings.from_env()
    dataset, ingest_s = ingest_task(brand, sources, None, None)
    trained = run_training(brand, dataset.fingerprint, training, force)
    release = _Release(promote, _approval_required(brand, require_approval), approval_timeout_hours)
    if not trained["trained"]:
        return _unchanged(
            settings, brand, dataset, ingest_s, trained, evaluation, release, evaluate_unchanged
        )
    version, register_s = register_task(brand, trained["mlflow_run_id"])
    train_experiment = lineage_task(trained["mlflow_run_id"], version.name, version.version)
    timings = {"ingest_s": ingest_s, "train_s": trained["seconds"], "register_s": register_s}
    facts = [
        _dataset_fact(brand, dataset),
        *training_facts(settings, trained, train_experiment),
        ("model version", version_link(settings, version.name, version.version) + " @candidate"),
    ]
    outcome, approval, facts = _evaluate_and_release(
        settings, brand, version.version, evaluation, release, facts, timings
    )
    verdict = "promoted to @champion" if outcome.promoted else "not promoted"
    verdict += f" ({approval.status})" if approval else ""
    _publish_summary(brand, f"v{version.version} {verdict}", facts, outcome, timings)
    result = {
        "trained": True,
        "unchanged_version": None,
        "dataset": dataset.fingerprint,
        "mlflow_run_id": trained["mlflow_run_id"],
        "version": version.version,
        "passed": outcome.gate.passed,
        "promoted": outcome.promoted,
        "champion_before": outcome.champion_version,
        "evaluation_run_id": outcome.mlflow_run_id,
        "approval": approval.status if approval else None,
        "timings": timings,
    }
    return _final(result, approval)


def _final(result: dict[str, Any], approval: Approval | None) -> dict[str, Any] | State:
    """The flow's return: ``result``, or a completed state named "Approval expired" when nobody answered (nothing
    moved, and it is not a crash)."""
    if approval and approval.status == EXPIRED:
        return Completed(name="Approval expired", message=approval.line(), data=result)
    return result


@dataclass(frozen=True)
class _Release:
    """How a passing candidate is released: ``promote`` at all, and whether a person must approve first."""

    promote: bool
    approval: bool
    timeout_hours: float | None

    @property
    def promote_at_once(self) -> bool:
        return self.promote and not self.approval


def _evaluate_and_release(
    settings: Settings,
    brand: str,
    number: str,
    evaluation: EvaluationParams,
    release: _Release,
    facts: list[tuple[str, str]],
    timings: dict[str, float],
) -> tuple[EvalOutcome, Approval | None, list[tuple[str, str]]]:
    """Evaluate version ``number`` against @champion and release it as ``release`` says: the evaluation promotes
    at once, or, with approval required and the gate passed, the run pauses for a person's decision first.

    Returns:
        The outcome (``promoted`` as it ended), the approval (None when none was asked for) and the summary facts.
    """
    outcome, timings["evaluate_s"] = evaluate_task(
        evaluation.eval_config(brand, number, "champion", release.promote_at_once)
    )
    experiment = lineage_task(outcome.mlflow_run_id)
    if not (release.promote and release.approval and outcome.gate.passed):
        return outcome, None, [*facts, *evaluation_facts(settings, brand, outcome, experiment)]
    waiting = [*facts, *evaluation_facts(settings, brand, outcome, experiment)]
    _publish_summary(brand, f"v{number} waiting for approval", waiting, outcome, timings)
    outcome, approval = _approve_and_promote(brand, outcome, waiting, release.timeout_hours)
    return (
        outcome,
        approval,
        [
            *facts,
            *evaluation_facts(settings, brand, outcome, experiment),
            ("approval", approval.line()),
        ],
    )


def _approval_required(brand: str, asked: bool | None) -> bool:
    """The flow parameter when given, else the brand's ``automation.require_approval``."""
    from brandtune.config import load_brand

    return load_brand(brand).automation.require_approval if asked is None else asked


def _approve_and_promote(
    brand: str, outcome: EvalOutcome, facts: list[tuple[str, str]], timeout_hours: float | None
) -> tuple[EvalOutcome, Approval]:
    """Pause for a person's decision on the passing candidate; on approve, promote it against the champion it was
    evaluated with (compare-and-swap: a champion that moved meanwhile is reported, not overwritten)."""
    from prefect.logging import get_run_logger

    from brandtune.registry import ChampionMovedError
    from brandtune.registry import promote as promote_version

    summary = "\n\n".join(
        [
            markdown_table([{"": k, "value": v} for k, v in facts]),
            "## Metrics\n\n" + markdown_table(metric_rows(outcome.metrics)),
            gate_markdown(outcome),
        ]
    )
    hours = timeout_hours or TIMEOUTS.approval / 3600
    approval = await_approval(brand, outcome.candidate_version, outcome.champion_version, summary, hours)
    if not approval.approved:
        return outcome, approval
    try:
        promote_version(
            brand,
            outcome.candidate_version,
            expected_champion=outcome.champion_version,
            reason=f"approved by {approval.approver}",
        )
    except ChampionMovedError as exc:
        get_run_logger().warning("%s", exc)
        return outcome, approval
    return replace(outcome, promoted=True), approval


def _dataset_fact(brand: str, dataset: IngestResult) -> tuple[str, str]:
    return ("dataset", f"`{brand}/{dataset.fingerprint}` ({dataset.num_images} images)")


def _publish_summary(
    brand: str,
    headline: str,
    facts: list[tuple[str, str]],
    outcome: EvalOutcome | None,
    timings: dict[str, float],
) -> None:
    """The run's summary artifact: ``Retrain of <model>: <headline>``, the facts, and the metrics and gate
    decision when there was an evaluation, then the time inside each task."""
    publish(
        "retrain",
        brand,
        f"Retrain of {model_name(brand)}: {headline}",
        facts,
        metric_rows(outcome.metrics) if outcome else None,
        (gate_markdown(outcome) + "\n\n" if outcome else "") + _timing_markdown(timings),
    )


def _timing_markdown(timings: dict[str, float]) -> str:
    return "## Time inside the tasks\n\n" + markdown_table(
        [{"stage": k.removesuffix("_s"), "seconds": round(v, 2)} for k, v in timings.items()]
    )


def _unchanged(
    settings: Settings,
    brand: str,
    dataset: IngestResult,
    ingest_s: float,
    trained: dict[str, Any],
    evaluation: EvaluationParams,
    release: _Release,
    evaluate_unchanged: bool,
) -> dict[str, Any] | State:
    """Nothing to train: report the version that already has this identity, and evaluate it only if asked.

    Nothing of that version is touched (no registration, no lineage tags, no alias) unless its evaluation is
    asked for and the gate (and, when required, a person) promotes it.
    """
    unchanged = trained["unchanged"]
    number = unchanged["version"]
    timings = {"ingest_s": ingest_s}
    facts = [_dataset_fact(brand, dataset), *unchanged_facts(settings, trained)]
    outcome, approval = None, None
    if evaluate_unchanged:
        outcome, approval, facts = _evaluate_and_release(
            settings, brand, number, evaluation, release, facts, timings
        )
    promoted = bool(outcome and outcome.promoted)
    verdict = "promoted to @champion" if promoted else "evaluated again" if outcome else "untouched"
    verdict += f" ({approval.status})" if approval else ""
    _publish_summary(brand, f"nothing changed, v{number} {verdict}", facts, outcome, timings)
    result = {
        "trained": False,
        "unchanged_version": number,
        "message": trained["message"],
        "dataset": dataset.fingerprint,
        "mlflow_run_id": unchanged["run_id"],
        "version": number,
        "passed": outcome.gate.passed if outcome else None,
        "promoted": promoted,
        "champion_before": outcome.champion_version if outcome else unchanged["champion"],
        "evaluation_run_id": outcome.mlflow_run_id if outcome else None,
        "approval": approval.status if approval else None,
        "timings": timings,
    }
    return _final(result, approval)
