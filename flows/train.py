"""The ``train`` flow: LoRA-fine-tune the brand's base model on a dataset (optionally register the result)."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from brandtune.settings import Settings
from flows._artifacts import publish, run_link, version_link
from flows._params import BrandSlug, TrainingParams
from flows._tasks import lineage_task, register_task, train_task


def run_training(brand: str, dataset: str | None, training: TrainingParams) -> dict[str, Any]:
    """Run the training task with the parameters' retries and timeout (shared by ``train`` and ``retrain``)."""
    task = train_task.with_options(
        retries=training.retries,
        retry_delay_seconds=10,
        timeout_seconds=training.timeout_minutes * 60 if training.timeout_minutes else None,
    )
    return task(training.train_config(brand, dataset), training.num_processes, training.accelerate_config)


def training_facts(
    settings: Settings, result: dict[str, Any], experiment_id: str | None
) -> list[tuple[str, str]]:
    """Summary rows for a training result."""
    resumed = result.get("resumed_from", "0")
    return [
        ("MLflow run", run_link(settings, result["mlflow_run_id"], experiment_id)),
        (
            "steps",
            f"{result['steps']}" + (f" (resumed from step {resumed})" if resumed not in ("", "0") else ""),
        ),
        ("final loss", f"{float(result['final_loss']):.4f}"),
        ("adapter", f"`{result['adapter_dir']}`"),
        ("latent cache", "hit" if result.get("cache_hit") == "True" else "built"),
    ]


@flow(name="train", log_prints=False, validate_parameters=True)
def train_flow(
    brand: BrandSlug = "acme",
    dataset: Annotated[
        str | None,
        Field(
            description="Dataset fingerprint (or unique prefix) to train on. Empty: the brand's latest dataset."
        ),
    ] = None,
    training: TrainingParams = TrainingParams(),
    register_version: Annotated[
        bool, Field(description="Register the adapter as a new model version with alias @candidate.")
    ] = True,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter for a brand.

    Trains on the brand's latest dataset (run `ingest` first) unless you give a dataset fingerprint. The training
    log streams into this run's log; the MLflow run (loss curve, samples, config) is linked in the summary. A
    retried training resumes from its last checkpoint. With `register` on, the adapter becomes a new version of
    `{brand}-lora` with alias @candidate (it does not replace @champion: run `evaluate` for that).

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml (e.g. acme).
        dataset: Dataset fingerprint (or unique prefix) to train on. Empty: the brand's latest dataset.
        training: Training settings: steps, batch size, LoRA rank, learning rate, precision, GPUs.
        register_version: Register the adapter as a new model version with alias @candidate.
    """
    settings = Settings.from_env()
    result = run_training(brand, dataset, training)
    version = register_task(brand, result["mlflow_run_id"]) if register_version else None
    experiment_id = lineage_task(
        result["mlflow_run_id"], version and version["name"], version and version["version"]
    )
    facts = training_facts(settings, result, experiment_id)
    if version:
        facts.append(
            ("model version", version_link(settings, version["name"], version["version"]) + " @candidate")
        )
    publish(
        "train",
        brand,
        f"LoRA training for {brand}",
        facts,
        [
            {"metric": "final_loss", "value": float(result["final_loss"])},
            {"metric": "steps", "value": int(result["steps"])},
            {"metric": "train_seconds", "value": round(result["seconds"], 2)},
        ],
    )
    return {**result, "version": version}
