"""The ``retrain`` flow: the whole chain, ingest -> train -> register -> evaluate -> promote if the gate passes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from prefect import flow
from pydantic import Field

from brandtune.registry import model_name
from brandtune.settings import Settings
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
) -> dict[str, Any]:
    """Retrain a brand's adapter from its photos and release it if it is better than the live one.

    1. ingest the photos (an unchanged photo set reuses its dataset),
    2. fine-tune a LoRA adapter (log streams here; a retry of this flow run resumes from its last checkpoint),
    3. register it as a new version of `{brand}-lora` with alias @candidate,
    4. evaluate it against @champion on the brand's fixed prompts and seeds,
    5. move @champion to it when every gate rule passes (the old champion becomes @previous-champion).

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
    """
    settings = Settings.from_env()
    dataset, ingest_s = ingest_task(brand, sources, None, None)
    trained = run_training(brand, dataset.fingerprint, training, force)
    if not trained["trained"]:
        return _unchanged(
            settings, brand, dataset, ingest_s, trained, evaluation, promote, evaluate_unchanged
        )
    version, register_s = register_task(brand, trained["mlflow_run_id"])
    train_experiment = lineage_task(trained["mlflow_run_id"], version.name, version.version)
    outcome, eval_seconds = evaluate_task(evaluation.eval_config(brand, version.version, "champion", promote))
    eval_experiment = lineage_task(outcome.mlflow_run_id)
    timings = {
        "ingest_s": ingest_s,
        "train_s": trained["seconds"],
        "register_s": register_s,
        "evaluate_s": eval_seconds,
    }
    facts = [
        _dataset_fact(brand, dataset),
        *training_facts(settings, trained, train_experiment),
        ("model version", version_link(settings, version.name, version.version) + " @candidate"),
        *evaluation_facts(settings, brand, outcome, eval_experiment),
    ]
    verdict = "promoted to @champion" if outcome.promoted else "not promoted"
    _publish_summary(brand, f"v{version.version} {verdict}", facts, outcome, timings)
    return {
        "trained": True,
        "unchanged_version": None,
        "dataset": dataset.fingerprint,
        "mlflow_run_id": trained["mlflow_run_id"],
        "version": version.version,
        "passed": outcome.gate.passed,
        "promoted": outcome.promoted,
        "champion_before": outcome.champion_version,
        "evaluation_run_id": outcome.mlflow_run_id,
        "timings": timings,
    }


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
    promote: bool,
    evaluate_unchanged: bool,
) -> dict[str, Any]:
    """Nothing to train: report the version that already has this identity, and evaluate it only if asked.

    Nothing of that version is touched (no registration, no lineage tags, no alias) unless its evaluation is
    asked for and the gate promotes it.
    """
    unchanged = trained["unchanged"]
    number = unchanged["version"]
    timings = {"ingest_s": ingest_s}
    facts = [_dataset_fact(brand, dataset), *unchanged_facts(settings, trained)]
    outcome = None
    if evaluate_unchanged:
        outcome, timings["evaluate_s"] = evaluate_task(
            evaluation.eval_config(brand, number, "champion", promote)
        )
        facts += evaluation_facts(settings, brand, outcome, lineage_task(outcome.mlflow_run_id))
    promoted = bool(outcome and outcome.promoted)
    verdict = "promoted to @champion" if promoted else "evaluated again" if outcome else "untouched"
    _publish_summary(brand, f"nothing changed, v{number} {verdict}", facts, outcome, timings)
    return {
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
        "timings": timings,
    }
