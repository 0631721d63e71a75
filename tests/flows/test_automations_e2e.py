"""Release automation through a real Prefect server and worker (tests/helpers/deployed.py): approval of a promotion
in a paused retrain, the campaign a promotion triggers, and retraining on a new dataset.

The retrains here train 2 steps and evaluate 1 seed x 2 sampler steps with a gate every candidate passes, so each
takes well under a minute; approval is given through the API, as the UI's Resume form sends it. Screenshots (the
approval form, the campaign artifact) are written to the test's tmp folder and, when BRANDTUNE_SCREENSHOTS names a
folder, copied there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import open_and_click
from deployed import CHROMIUM_FLAGS, chromium, deployed_stack
from flow_helpers import LENIENT_GATE, TINY_EVAL, TINY_TRAINING

from brandtune import services

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
EVALUATION = {**TINY_EVAL, "gate": LENIENT_GATE}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, brandtune_home: Path) -> Iterator[dict[str, Any]]:
    with deployed_stack(tmp_path_factory.mktemp("automations"), brandtune_home) as stack:
        yield stack


@pytest.fixture(scope="module")
def mlc(deployed: dict[str, Any]) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(str(deployed["mlflow"].url))


def _keep(shot: Path) -> None:
    if folder := os.environ.get("BRANDTUNE_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
    print(f"screenshot: {shot}")


def _wait(client: Any, run_id: Any, done: Any, deployed: dict[str, Any], timeout: float = 600) -> Any:
    """Poll the flow run until ``done(state)``; fail with the worker's log tail."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.read_flow_run(run_id).state
        if state is not None and done(state):
            return state
        assert state is None or not (state.is_final() and not done(state)), (
            f"{state.name}: {state.message}\n{services.tail(deployed['worker'].log_path, 40)}"
        )
        assert time.monotonic() < deadline, (
            f"stuck in {state}\n{services.tail(deployed['worker'].log_path, 40)}"
        )
        time.sleep(1)


def _retrain(seed: int, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(
        "retrain/weekly-retrain",
        parameters={
            "brand": "acme",
            "training": {**TINY_TRAINING, "seed": seed},
            "evaluation": EVALUATION,
            "require_approval": True,
            **parameters,
        },
        timeout=0,
    )


def _champion(mlc: Any) -> str | None:
    aliases = mlc.get_registered_model("acme-lora").aliases
    return str(aliases["champion"]) if "champion" in aliases else None


def _paused_version(client: Any, run: Any, deployed: dict[str, Any], mlc: Any) -> str:
    """Wait until the retrain pauses for approval; return the candidate it waits on (its own registration)."""
    _wait(client, run.id, lambda s: s.is_paused(), deployed)
    (version,) = mlc.search_model_versions(f"name = 'acme-lora' and tags.`prefect.flow_run_id` = '{run.id}'")
    return str(version.version)


def test_approve_promotes_with_the_decision_recorded_and_triggers_the_campaign(
    deployed: dict[str, Any], mlc: Any, brandtune_home: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    run = _retrain(seed=21)
    with get_client(sync_client=True) as client:
        version = _paused_version(client, run, deployed, mlc)
        assert _champion(mlc) != version  # nothing moved while it waits
        shot = tmp_path / "approval-form.png"
        page = open_and_click(
            chromium(), f"{deployed['api'].url}/runs/flow-run/{run.id}", "Resume", "Approver", shot,
            tmp_path / "profile",
        )  # fmt: skip
        _keep(shot)
        assert f"Promote acme v{version} to @champion?" in page and "Gate" in page, page[:3000]
        resume_flow_run(run.id, run_input={"decision": "approve", "approver": "ann", "comment": "on brand"})
        state = _wait(client, run.id, lambda s: s.is_completed(), deployed)
    assert _champion(mlc) == version, state.message
    tags = mlc.get_model_version("acme-lora", version).tags
    assert (tags["brandtune.approval"], tags["brandtune.approval.approver"]) == ("approved", "ann")
    assert tags["brandtune.approval.comment"] == "on brand" and tags["brandtune.approval.time"]
    _campaign_follows(deployed, mlc, version, brandtune_home, tmp_path)


def _campaign_follows(
    deployed: dict[str, Any], mlc: Any, version: str, brandtune_home: Path, tmp_path: Path
) -> None:
    """The promotion's brandtune.champion.changed event made the trigger run scheduled-campaign for acme from that
    version; it completes with its gallery, an MLflow campaign run and the summary artifact."""
    import subprocess

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                r
                for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["scheduled-campaign"]))
                )
                if r.parameters.get("brand") == "acme" and str(r.parameters.get("model")) == version
            ]
            if runs:
                break
            assert time.monotonic() < deadline, "no campaign flow run was triggered by the promotion"
            time.sleep(2)
        (run,) = runs
        assert "champion changed" in run.parameters["reason"]
        _wait(client, run.id, lambda s: s.is_completed(), deployed, timeout=900)
        artifact = client.read_artifacts()  # newest first is not guaranteed: find the summary by key
        summary = next(a for a in artifact if a.key == "campaign-acme-summary" and a.flow_run_id == run.id)
    galleries = list(brandtune_home.glob(f"campaigns/acme/lookbook/*-v{version}-*/index.html"))
    assert len(galleries) == 1
    campaign_runs = mlc.search_runs(
        [mlc.get_experiment_by_name("brandtune/acme").experiment_id],
        f"tags.`brandtune.stage` = 'campaign' and tags.`brandtune.model_version` = '{version}'",
    )
    assert len(campaign_runs) == 1
    assert "| campaign | beach | kitchen | snow | studio | images | this run |" in summary.data
    shot = tmp_path / "campaign-artifact.png"
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
         f"{deployed['api'].url}/artifacts/artifact/{summary.id}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    _keep(shot)


def test_reject_leaves_the_candidate_unpromoted_with_the_reason(deployed: dict[str, Any], mlc: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    before = _champion(mlc)
    run = _retrain(seed=22)
    with get_client(sync_client=True) as client:
        version = _paused_version(client, run, deployed, mlc)
        resume_flow_run(
            run.id, run_input={"decision": "reject", "approver": "bob", "comment": "cap is off-red"}
        )
        _wait(client, run.id, lambda s: s.is_completed(), deployed)
    assert _champion(mlc) == before
    aliases = mlc.get_registered_model("acme-lora").aliases
    assert str(aliases["candidate"]) == version
    tags = mlc.get_model_version("acme-lora", version).tags
    assert (tags["brandtune.approval"], tags["brandtune.approval.approver"]) == ("rejected", "bob")
    assert tags["brandtune.approval.comment"] == "cap is off-red"


def test_no_answer_expires_into_a_named_state_and_promotes_nothing(
    deployed: dict[str, Any], mlc: Any
) -> None:
    from prefect.client.orchestration import get_client

    before = _champion(mlc)
    run = _retrain(seed=23, approval_timeout_hours=0.003)  # about 11 seconds
    with get_client(sync_client=True) as client:
        version = _paused_version(client, run, deployed, mlc)
        state = _wait(client, run.id, lambda s: s.is_completed(), deployed)
    assert state.name == "Approval expired", (state.name, state.message)
    assert _champion(mlc) == before
    assert mlc.get_model_version("acme-lora", version).tags["brandtune.approval"] == "expired"


def test_a_new_dataset_starts_a_retrain_only_when_the_trigger_and_the_brand_opt_in(
    deployed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off by default: a new dataset starts nothing. With the trigger enabled (as an operator would in the UI),
    a new dataset of a brand that opted in (automation.retrain_on_new_photos) starts weekly-retrain for it."""
    from prefect.client.orchestration import get_client

    from brandtune.config import load_brand
    from brandtune.ingest import ingest

    spec = yaml.safe_load((REPO_ROOT / "data/brands/acme/brand.yaml").read_text())
    spec["automation"] = {"retrain_on_new_photos": True}
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "brand.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("BRANDTUNE_BRANDS_DIR", str(tmp_path))
    photos = sorted(
        p
        for p in (REPO_ROOT / "data/brands/acme/photos").iterdir()
        if p.suffix == ".png" and ".mask" not in p.name
    )
    brand = load_brand("acme")
    with get_client(sync_client=True) as client:
        since = _retrain_runs(client)
        first = ingest(brand, photos[:-1], progress=False)  # a photo set never ingested before: a new dataset
        assert not first.reused
        time.sleep(15)  # time enough for a trigger to fire, were it on
        assert _retrain_runs(client) == since, "the disabled trigger started a retrain"
        (automation,) = client.read_automations_by_name("retrain-on-new-photos")
        client.resume_automation(automation.id)  # the UI's toggle
        time.sleep(3)  # the trigger service loads the automation
        second = ingest(brand, photos[1:], progress=False)
        assert not second.reused and second.fingerprint != first.fingerprint
        deadline = time.monotonic() + 90
        while not (new := _retrain_runs(client) - since):
            assert time.monotonic() < deadline, "the enabled trigger started no retrain"
            time.sleep(2)
        (run_id,) = new
        run = client.read_flow_run(run_id)
        assert run.parameters["brand"] == "acme"
        _cancel(client, run_id)
        client.pause_automation(automation.id)


def _retrain_runs(client: Any) -> set[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    name = DeploymentFilter(name=DeploymentFilterName(any_=["weekly-retrain"]))
    return {r.id for r in client.read_flow_runs(deployment_filter=name)}


def _cancel(client: Any, run_id: Any) -> None:
    from prefect.states import Cancelling

    client.set_flow_run_state(run_id, Cancelling(), force=True)
