"""prefect.yaml: every entrypoint imports, every deployment's defaults validate against its flow's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

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
    assert set(flows) == {
        "ingest_flow",
        "train_flow",
        "evaluate_flow",
        "generate_flow",
        "retrain_flow",
        "campaign_flow",
    }
    assert all(d["work_pool"]["name"] == "brandtune-local" for d in DEPLOYMENTS)
    retrain, evaluate = flows["retrain_flow"], flows["evaluate_flow"]
    assert retrain["schedules"][0]["cron"] and retrain["schedules"][0]["timezone"]
    assert evaluate["schedules"][0]["cron"] and evaluate["parameters"]["against"] == "champion"
    assert not flows["generate_flow"].get("schedules")
    campaign = flows["campaign_flow"]
    assert campaign["name"] == "scheduled-campaign" and campaign["parameters"]["model"] == "champion"
    assert campaign["schedules"][0]["cron"] == "0 6 * * 1" and campaign["schedules"][0]["active"]
    for name in ("retrain_flow", "train_flow"):
        assert flows[name]["concurrency_limit"]["limit"] == 1
    assert SPEC["pull"] == [{"brandtune.deploy_steps.enter_checkout": {"directory": "{{ $BRANDTUNE_REPO }}"}}]


def _run_pull_steps() -> dict[str, Any]:
    """prefect.yaml's pull steps as Prefect's step runner calls them: the name imported, ``{{ $VAR }}`` filled from
    os.environ (the runner's block and variable lookups need an API; the e2e test runs the whole runner)."""
    import os

    from prefect.utilities.importtools import import_object
    from prefect.utilities.templating import apply_values

    outputs: dict[str, Any] = {}
    for step in SPEC["pull"]:
        ((name, inputs),) = step.items()
        outputs.update(import_object(name)(**apply_values(inputs, dict(os.environ))))
    return outputs


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        (None, "BRANDTUNE_REPO is not set on this worker: set it to the brandtune checkout"),
        ("", "BRANDTUNE_REPO is not set on this worker"),
        ("{tmp}/elsewhere", "on this worker is not a folder"),
        ("{tmp}", "on this worker has no flows/ or prefect.yaml: set it to the brandtune checkout"),
    ],
)
def test_pull_step_names_the_fix(
    repo: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brandtune.deploy_steps import WorkerSetupError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    if repo is None:
        monkeypatch.delenv("BRANDTUNE_REPO", raising=False)
    else:
        monkeypatch.setenv("BRANDTUNE_REPO", repo.format(tmp=tmp_path))
    with pytest.raises(WorkerSetupError) as info:
        _run_pull_steps()
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert message in text and "\n" not in text and text.endswith("restart the worker")
    assert Path.cwd() == tmp_path


def test_pull_step_enters_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRANDTUNE_REPO", str(REPO_ROOT))
    outputs = _run_pull_steps()
    assert outputs == {"directory": str(REPO_ROOT)}
    assert Path.cwd() == REPO_ROOT


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
    # empty means the base model's recommendation; a value is bounded as in TrainConfig
    assert {"type": "null"} in training["max_train_steps"]["anyOf"]
    assert training["max_train_steps"]["anyOf"][0]["minimum"] == 1


def test_evaluation_parameters_nest_the_sampler_with_its_dropdown() -> None:
    flow = _flow("flows/retrain.py:retrain_flow")
    schema = flow.parameters.model_dump()
    evaluation = schema["definitions"]["EvaluationParams"]["properties"]
    assert evaluation["sampler"]["$ref"].endswith("/SamplerConfig") and evaluation["sampler"]["description"]
    sampler = schema["definitions"]["SamplerConfig"]["properties"]
    # empty means the base family's default (ddim/20/4.0 for SD, 28 steps for FLUX.1-dev and SD3, ...)
    assert sampler["scheduler"]["enum"] == ["auto", "default", "ddim", "euler", "dpm++"]
    steps = sampler["num_inference_steps"]["anyOf"]
    assert (steps[0]["minimum"], steps[0]["maximum"]) == (1, 200) and {"type": "null"} in steps
    assert evaluation["seeds"]["maxItems"] == 64
    # what the deployments set reaches the evaluation's sampler
    weekly = next(d for d in DEPLOYMENTS if d["name"] == "weekly-retrain")
    params = flow.validate_parameters(weekly["parameters"])["evaluation"]
    config = params.eval_config("acme", "1", "champion", promote=True)
    assert config.sampler.num_inference_steps == 20 and config.seeds == [0, 1, 2, 3]


def test_training_parameters_reach_the_train_config() -> None:
    from brandtune.config import NON_ATTENTION_UNET_TARGETS
    from flows._params import TrainingParams

    default = TrainingParams().train_config("acme", None)
    # left empty: filled from the base model's recommendation when the training resolves
    assert default.target_modules is None and default.lr_warmup_steps is None
    chosen = TrainingParams(
        target_modules=NON_ATTENTION_UNET_TARGETS, lr_scheduler="cosine", lr_warmup_steps=20
    ).train_config("acme", "abc")
    assert chosen.target_modules == NON_ATTENTION_UNET_TARGETS
    assert (chosen.lr_scheduler, chosen.lr_warmup_steps, chosen.dataset) == ("cosine", 20, "abc")
