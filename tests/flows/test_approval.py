"""The approval pause (flows/_approval.py) through Prefect's test harness: a person's answer, given through the API
as the UI's Resume form sends it, and an approval nobody answers, which expires into a completed run."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("acme_dataset")


def _decide(run_ids: list[str], answer: dict[str, str] | None) -> threading.Thread:
    """Resume the first flow run in ``run_ids`` with ``answer`` once it is paused (None: never answer)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    def answer_when_paused() -> None:
        while not run_ids:
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            while not client.read_flow_run(run_ids[0]).state.is_paused():
                time.sleep(0.5)
        resume_flow_run(run_ids[0], run_input=answer)

    thread = threading.Thread(target=answer_when_paused, daemon=True)
    if answer is not None:
        thread.start()
    return thread


def _approval_flow(version: str, hours: float, run_ids: list[str]) -> Any:
    from prefect import flow
    from prefect.runtime import flow_run
    from prefect.states import Completed

    from flows._approval import EXPIRED, await_approval

    @flow(name="approval-test")
    def approval_test() -> Any:
        run_ids.append(str(flow_run.get_id()))
        approval = await_approval("acme", version, None, "the summary", hours)
        if approval.status == EXPIRED:
            return Completed(name="Approval expired", message=approval.line(), data=approval.status)
        return approval.status

    return approval_test(return_state=True)


@pytest.mark.parametrize(("decision", "status"), [("approve", "approved"), ("reject", "rejected")])
def test_an_answer_through_the_api_is_returned_and_recorded(
    prefect_harness: None, versions: list[str], mlflow_client: Any, decision: str, status: str
) -> None:
    run_ids: list[str] = []
    answer = {"decision": decision, "approver": "ann", "comment": "seen it"}
    thread = _decide(run_ids, answer)
    state = _approval_flow(versions[0], 1.0, run_ids)
    thread.join(timeout=5)
    assert state.is_completed() and state.result() == status
    tags = mlflow_client.get_model_version("acme-lora", versions[0]).tags
    assert (tags["brandtune.approval"], tags["brandtune.approval.approver"]) == (status, "ann")
    assert tags["brandtune.approval.comment"] == "seen it"


def test_no_answer_expires_into_a_completed_named_state(
    prefect_harness: None, versions: list[str], mlflow_client: Any
) -> None:
    from prefect.client.orchestration import get_client

    run_ids: list[str] = []
    state = _approval_flow(versions[1], 3 / 3600, run_ids)  # three seconds
    assert state.is_completed() and state.name == "Approval expired", (state.name, state.message)
    with get_client(sync_client=True) as client:
        history = [s.type.value for s in client.read_flow_run_states(run_ids[0])]
    assert "FAILED" not in history, history  # resumed by the expiry, never failed by Prefect
    assert mlflow_client.get_model_version("acme-lora", versions[1]).tags["brandtune.approval"] == "expired"
