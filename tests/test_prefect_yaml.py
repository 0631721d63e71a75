"""prefect.yaml: every entrypoint imports, every deployment's defaults validate against its flow's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

SPEC: dict[str, Any] = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS: list[dict[str, Any]] = SPEC["deployments"]


def _flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    path, func = entrypoint.split(":")
    assert (REPO_ROOT / path).is_file(), f"entrypoint file {path} does not exist"
    return load_flow_from_entrypoint(f"{REPO_ROOT / path}:{func}")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_and_defaults_validate(deployment: dict[str, Any]) -> None:
    flow = _flow(deployment["entrypoint"])
    params = deployment.get("parameters", {})
    validated = flow.validate_parameters(params)
    assert set(params) <= set(validated)
    # the UI form: every parameter has a description
    schema = flow.parameters.model_dump()
    for name, prop in schema["properties"].items():
        described = prop.get("description") or any(
            "description" in d for d in schema.get("definitions", {}).values() if f"/{name}" in str(prop)
        )
        assert described or "$ref" in prop or "allOf" in prop, (
            f"{deployment['name']}: {name} has no description"
        )
    assert flow.description and len(flow.description) > 80, "the flow's docstring is what the Run page shows"


def test_deployments_are_unique_scheduled_and_limited() -> None:
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names))
    flows = {d["entrypoint"].split(":")[1]: d for d in DEPLOYMENTS}
    assert set(flows) == {"ingest_flow", "train_flow", "evaluate_flow", "generate_flow", "retrain_flow"}
    assert all(d["work_pool"]["name"] == "brandtune-local" for d in DEPLOYMENTS)
    retrain, evaluate = flows["retrain_flow"], flows["evaluate_flow"]
    assert retrain["schedules"][0]["cron"] and retrain["schedules"][0]["timezone"]
    assert evaluate["schedules"][0]["cron"] and evaluate["parameters"]["against"] == "champion"
    assert not flows["generate_flow"].get("schedules")
    for name in ("retrain_flow", "train_flow"):
        assert flows[name]["concurrency_limit"]["limit"] == 1
    pull = SPEC["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert "BRANDTUNE_REPO" in pull["directory"]


def test_no_secrets_in_prefect_yaml() -> None:
    text = yaml.safe_dump(SPEC).lower()  # the content, not the comments
    for word in ("password", "secret", "token", "api_key", "aws_access", "://"):
        assert word not in text


def test_training_parameters_show_dropdowns(tmp_path: Path) -> None:
    flow = _flow("flows/retrain.py:retrain_flow")
    schema = flow.parameters.model_dump()
    training = schema["definitions"]["TrainingParams"]["properties"]
    assert training["mixed_precision"]["enum"] == ["no", "fp16", "bf16"]
    assert "multi_gpu_ddp" in training["accelerate_config"]["enum"]
    assert training["max_train_steps"]["minimum"] == 1


def test_training_parameters_reach_the_train_config() -> None:
    from brandtune.training.config import DEFAULT_UNET_TARGETS, NON_ATTENTION_UNET_TARGETS
    from flows._params import TrainingParams

    default = TrainingParams().train_config("acme", None)
    assert default.target_modules == DEFAULT_UNET_TARGETS and default.lr_warmup_steps == 0
    chosen = TrainingParams(
        target_modules=NON_ATTENTION_UNET_TARGETS, lr_scheduler="cosine", lr_warmup_steps=20
    ).train_config("acme", "abc")
    assert chosen.target_modules == NON_ATTENTION_UNET_TARGETS
    assert (chosen.lr_scheduler, chosen.lr_warmup_steps, chosen.dataset) == ("cosine", 20, "abc")
