"""The weekly pipeline through its flows, in order, on one registry (this module's MLflow store): retrain (the
first champion), retrain again on the same photos (nothing trained, v1 untouched) and with force (a new version),
train + a failing gate (the champion untouched), and a campaign generated from the champion.

Real Prefect (the test harness, tests/flows/conftest.py), real MLflow on sqlite, the built-in tiny model; training
runs 2 steps, evaluation 1 seed and 2 sampler steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flow_helpers import (
    IMPOSSIBLE_GATE,
    LENIENT_GATE,
    TINY_EVAL,
    TINY_TRAINING,
    _aliases,
    _artifact,
    _version_state,
)

pytestmark = pytest.mark.slow


def test_retrain_registers_evaluates_and_promotes(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.retrain import retrain_flow

    state = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    version = result["version"]
    assert result["passed"] and result["promoted"]
    aliases = _aliases(mlflow_client)
    assert aliases["candidate"] == version and aliases["champion"] == version
    # lineage both ways: the training run and the version name this flow run
    mv = mlflow_client.get_model_version("acme-lora", version)
    assert mv.tags["prefect.flow_run_id"] == flow_run_id
    assert mlflow_client.get_run(result["mlflow_run_id"]).data.tags["prefect.flow_run_id"] == flow_run_id
    evaluation_run = mlflow_client.get_run(result["evaluation_run_id"])
    assert evaluation_run.data.tags["prefect.flow_run_id"] == flow_run_id
    assert set(result["timings"]) == {"ingest_s", "train_s", "register_s", "evaluate_s"}
    summary = _artifact("retrain-acme-summary")
    assert f"acme-lora v{version}" in summary.data and "PASS" in summary.data
    assert "technical_ok" in _artifact("retrain-acme-metrics").data


def test_retrain_on_unchanged_photos_trains_nothing(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    """What the weekly schedule does most weeks: same photos, same settings. v1 is left exactly as it was."""
    from flows.retrain import retrain_flow

    v1 = _aliases(mlflow_client)["champion"]
    before = _version_state(mlflow_client, v1)
    count = len(mlflow_client.search_model_versions("name = 'acme-lora'"))
    state = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["trained"] is False and result["unchanged_version"] == v1 == result["version"]
    assert f"acme-lora v{v1} was trained on exactly this dataset and config" in result["message"]
    assert result["evaluation_run_id"] is None and not result["promoted"], "not re-evaluated unless asked"
    assert _version_state(mlflow_client, v1) == before, (
        "v1's tags and its run's tags and loss curve untouched"
    )
    assert len(mlflow_client.search_model_versions("name = 'acme-lora'")) == count
    summary = _artifact("retrain-acme-summary").data
    assert f"nothing changed, v{v1} untouched" in summary and "nothing to train" in summary
    # asked to, it evaluates the unchanged version again (still training and registering nothing)
    again = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        promote=False,
        evaluate_unchanged=True,
    )
    assert again["trained"] is False and again["evaluation_run_id"] and again["version"] == v1
    assert len(mlflow_client.search_model_versions("name = 'acme-lora'")) == count
    assert _version_state(mlflow_client, v1)[1:] == before[1:], "its training run is still untouched"


def test_retrain_with_force_trains_a_new_version(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.retrain import retrain_flow

    v1 = _aliases(mlflow_client)["champion"]
    before = _version_state(mlflow_client, v1)
    old_run = mlflow_client.get_model_version("acme-lora", v1).run_id
    result = retrain_flow(
        brand="acme",
        training=TINY_TRAINING,
        evaluation={**TINY_EVAL, "gate": LENIENT_GATE},
        promote=False,
        force=True,
    )
    assert result["trained"] is True and result["version"] != v1 and result["mlflow_run_id"] != old_run
    new = mlflow_client.get_model_version("acme-lora", result["version"])
    assert new.tags["brandtune.config_hash"] == before[0]["brandtune.config_hash"], "the same training, anew"
    assert _version_state(mlflow_client, v1) == before, "the earlier version and run are untouched"
    old_dir = Path(before[1]["brandtune.run_dir"])
    assert mlflow_client.get_run(result["mlflow_run_id"]).data.tags["brandtune.run_dir"] != str(old_dir)
    assert (old_dir / "result.json").is_file()


def test_train_then_failing_gate_leaves_champion(
    prefect_harness: None, mlflow_client: Any, torch_threads: None
) -> None:
    from flows.evaluate import evaluate_flow
    from flows.train import train_flow

    champion = _aliases(mlflow_client)["champion"]
    trained = train_flow(brand="acme", training={**TINY_TRAINING, "seed": 1})
    new = trained["version"]["version"]
    assert new != champion and _aliases(mlflow_client)["candidate"] == new
    assert "final loss" in _artifact("train-acme-summary").data

    state = evaluate_flow(
        brand="acme", candidate=new, evaluation={**TINY_EVAL, "gate": IMPOSSIBLE_GATE}, return_state=True
    )
    assert state.is_completed(), state.message
    outcome = state.result()
    assert not outcome["passed"] and not outcome["promoted"]
    assert outcome["champion_version"] == champion
    assert _aliases(mlflow_client)["champion"] == champion
    summary = _artifact("evaluate-acme-summary").data
    assert "FAILED" in summary and "technical_ok" in summary


def test_generate_from_champion_links_gallery(
    prefect_harness: None, tmp_path: Path, torch_threads: None
) -> None:
    from flows.generate import generate_flow

    out = tmp_path / "campaign"
    result = generate_flow(
        brand="acme",
        prompt="a photo of {trigger} {subject}",
        settings=["beach"],
        variations=2,
        generation={"sampler": {"num_inference_steps": 2}, "batch_size": 2, "output_dir": str(out)},
    )
    assert result["generated"] == 2 and Path(result["gallery"]).is_file()
    assert Path(result["gallery"]).resolve().as_uri() in _artifact("generate-acme-gallery").data
    assert "gallery" in _artifact("generate-acme-summary").data
