"""The ``retrain`` flow: the whole chain, ingest -> train -> register -> evaluate -> promote if the gate passes."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from brandtune.registry import model_name
from brandtune.settings import Settings
from flows._artifacts import markdown_table, metric_rows, publish, version_link
from flows._params import BrandSlug, EvaluationParams, TrainingParams
from flows._tasks import evaluate_task, ingest_task, lineage_task, register_task
from flows.evaluate import evaluation_facts, gate_markdown
from flows.train import run_training, training_facts


@flow(name="retrain", log_prints=False, validate_parameters=True)
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
) -> dict[str, Any]:
    """Retrain a brand's adapter from its photos and release it if it is better than the live one.

    1. ingest the photos (an unchanged photo set reuses its dataset),
    2. fine-tune a LoRA adapter (log streams here; a retry resumes from the last checkpoint),
    3. register it as a new version of `{brand}-lora` with alias @candidate,
    4. evaluate it against @champion on the brand's fixed prompts and seeds,
    5. move @champion to it when every gate rule passes (the old champion becomes @previous-champion).

    The summary artifact links the MLflow runs, the model version, the metrics and the gate decision.

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml and photos/ (e.g. acme).
        sources: Photo folders, .zip files or images on the worker. Empty: data/brands/{brand}/photos.
        training: Training settings: steps, batch size, LoRA rank, learning rate, precision, GPUs, retries.
        evaluation: Seeds, sampler and the promotion gate's rules.
        promote: Make the new adapter @champion when it passes the gate (off: evaluate and report only).
    """
    settings = Settings.from_env()
    dataset = ingest_task(brand, sources, None, None)
    trained = run_training(brand, dataset["fingerprint"], training)
    version = register_task(brand, trained["mlflow_run_id"])
    train_experiment = lineage_task(trained["mlflow_run_id"], version["name"], version["version"])
    outcome, eval_seconds = evaluate_task(
        evaluation.eval_config(brand, version["version"], "champion", promote)
    )
    eval_experiment = lineage_task(outcome.mlflow_run_id)
    timings = {
        "ingest_s": dataset["seconds"],
        "train_s": trained["seconds"],
        "register_s": version["seconds"],
        "evaluate_s": eval_seconds,
    }
    facts = [
        ("dataset", f"`{brand}/{dataset['fingerprint']}` ({dataset['num_images']} images)"),
        *training_facts(settings, trained, train_experiment),
        ("model version", version_link(settings, version["name"], version["version"]) + " @candidate"),
        *evaluation_facts(settings, brand, outcome, eval_experiment),
    ]
    timing_md = "## Time inside the tasks\n\n" + markdown_table(
        [{"stage": k.removesuffix("_s"), "seconds": round(v, 2)} for k, v in timings.items()]
    )
    publish(
        "retrain",
        brand,
        f"Retrain of {model_name(brand)}: v{version['version']} "
        + ("promoted to @champion" if outcome.promoted else "not promoted"),
        facts,
        metric_rows(outcome.metrics),
        gate_markdown(outcome) + "\n\n" + timing_md,
    )
    return {
        "dataset": dataset["fingerprint"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "version": version["version"],
        "passed": outcome.gate.passed,
        "promoted": outcome.promoted,
        "champion_before": outcome.champion_version,
        "evaluation_run_id": outcome.mlflow_run_id,
        "timings": timings,
    }
