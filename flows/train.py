"""The ``train`` flow: LoRA-fine-tune the brand's base model on a dataset (optionally register the result)."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import Field

from brandtune.settings import Settings
from flows._artifacts import publish, run_link, version_link
from flows._params import TIMEOUTS, BrandSlug, TrainingParams
from flows._tasks import check_unchanged_task, lineage_task, register_task, train_task

ForceParam = Annotated[
    bool,
    Field(
        description="Train anew even when a registered version was trained on exactly this dataset and config "
        "(a new MLflow run and a new version; the earlier one stays as it is)."
    ),
]


def run_training(brand: str, dataset: str | None, training: TrainingParams, force: bool) -> dict[str, Any]:
    """Check whether anything changed, then run the training task with the parameters' retries and timeout
    (shared by ``train`` and ``retrain``).

    Returns:
        The training task's result (a :class:`~brandtune.training.TrainResult` as JSON values, and ``seconds``)
        with ``trained: True``; or, when a registered version already has this
        training's identity and ``force`` is off, ``trained: False`` with ``unchanged_version``, ``unchanged``
        (see :func:`~flows._tasks.check_unchanged_task`), that version's ``mlflow_run_id`` and ``message``.
    """
    config = training.train_config(brand, dataset)
    check = check_unchanged_task(config)
    unchanged = check["unchanged"]
    logger = get_run_logger()
    if unchanged and not force:
        logger.info("%s", unchanged["message"])
        return {
            "trained": False,
            "config_hash": check["config_hash"],
            "unchanged_version": unchanged["version"],
            "unchanged": unchanged,
            "mlflow_run_id": unchanged["run_id"],
            "message": unchanged["message"],
        }
    if unchanged:
        logger.info(
            "force: training anew, although %s v%s was trained on exactly this dataset and config",
            unchanged["name"],
            unchanged["version"],
        )
    task = train_task.with_options(
        retries=training.retries,
        retry_delay_seconds=training.retry_delay_seconds,
        # the parameter, else the task's default limit (None would lift it)
        timeout_seconds=training.timeout_minutes * 60
        if training.timeout_minutes
        else train_task.timeout_seconds,
    )
    result, seconds = task(config, training.num_processes, training.accelerate_config)
    return {**result.model_dump(mode="json"), "seconds": seconds, "trained": True, "unchanged_version": None}


def training_facts(
    settings: Settings, result: dict[str, Any], experiment_id: str | None
) -> list[tuple[str, str]]:
    """Summary rows for a training result."""
    resumed = result["resumed_from"]
    return [
        ("MLflow run", run_link(settings, result["mlflow_run_id"], experiment_id)),
        ("steps", f"{result['steps']}" + (f" (resumed from step {resumed})" if resumed else "")),
        ("final loss", f"{result['final_loss']:.4f}"),
        ("adapter", f"`{result['adapter_dir']}`"),
        ("latent cache", "hit" if result["cache_hit"] else "built"),
        ("config hash", f"`{result['config_hash']}`"),
    ]


def unchanged_facts(settings: Settings, result: dict[str, Any]) -> list[tuple[str, str]]:
    """Summary rows for a training that did not run: the version that already has its identity."""
    unchanged = result["unchanged"]
    aliases = " ".join(f"@{a}" for a in unchanged["aliases"])
    return [
        ("training", f"**not run**: {result['message']}"),
        (
            "unchanged version",
            version_link(settings, unchanged["name"], unchanged["version"]) + f" {aliases}",
        ),
        ("its MLflow run", run_link(settings, unchanged["run_id"])),
        ("config hash", f"`{result['config_hash']}`"),
    ]


@flow(name="train", log_prints=False, validate_parameters=True, timeout_seconds=TIMEOUTS.flow("train"))
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
    force: ForceParam = False,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter for a brand.

    Trains on the brand's latest dataset (run `ingest` first) unless you give a dataset fingerprint. Settings left
    empty take the base model's recommendation. When a registered version was already trained on exactly this
    dataset, config and base, nothing is trained (the summary names that version) unless you set `force`. The
    training log streams into this run's log; the MLflow run (loss curve, samples, config) is linked in the
    summary. A retry of this flow run resumes from its own last checkpoint. With `register_version` on, the adapter
    becomes a new version of `{brand}-lora` with alias @candidate (it does not replace @champion: run `evaluate`
    for that).

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml (e.g. acme).
        dataset: Dataset fingerprint (or unique prefix) to train on. Empty: the brand's latest dataset.
        training: Training settings: steps, batch size, LoRA rank, learning rate, precision, GPUs.
        register_version: Register the adapter as a new model version with alias @candidate.
        force: Train anew even when a registered version has exactly this dataset and config.
    """
    settings = Settings.from_env()
    result = run_training(brand, dataset, training, force)
    if not result["trained"]:
        publish(
            "train", brand, f"LoRA training for {brand}: nothing to train", unchanged_facts(settings, result)
        )
        return {**result, "version": None}
    version, register_s = register_task(brand, result["mlflow_run_id"]) if register_version else (None, 0.0)
    experiment_id = lineage_task(
        result["mlflow_run_id"], version and version.name, version and version.version
    )
    facts = training_facts(settings, result, experiment_id)
    if version:
        facts.append(("model version", version_link(settings, version.name, version.version) + " @candidate"))
    publish(
        "train",
        brand,
        f"LoRA training for {brand}",
        facts,
        [
            {"metric": "final_loss", "value": result["final_loss"]},
            {"metric": "steps", "value": result["steps"]},
            {"metric": "train_seconds", "value": round(result["seconds"], 2)},
        ],
    )
    registered = version and {"name": version.name, "version": version.version, "seconds": register_s}
    return {**result, "version": registered}
