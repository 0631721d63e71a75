"""Human approval of a promotion: the flow run pauses with a form in the Prefect UI (approve or reject, who, why).

A retrain (or an evaluation asked to promote) whose gate passed calls :func:`await_approval` instead of promoting
when approval is required (the flow parameter, or ``automation.require_approval`` in brand.yaml). The run pauses
with :class:`PromotionDecision` as its input form; the form's description is the evaluation's summary: metrics,
the gate's rules and the report link. The person's answer, or the timeout, is recorded on the candidate version as
``brandtune.approval.*`` tags and returned; promoting is then the caller's job, with the same compare-and-swap as
any promotion (the champion it was evaluated against).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect.input import RunInput
from pydantic import Field

logger = logging.getLogger(__name__)

APPROVAL_TAG = "brandtune.approval"
APPROVED, REJECTED, EXPIRED = "approved", "rejected", "expired"


class PromotionDecision(RunInput):
    """Approve or reject making the candidate @champion."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: the candidate becomes @champion now (the old one becomes @previous-champion). "
        "reject: it stays @candidate and nothing that generators use changes."
    )
    approver: str = Field(
        min_length=1, max_length=100, description="Your name; recorded on the model version."
    )
    comment: str = Field(
        default="",
        max_length=2000,
        description="Why you decided so; recorded on the model version and in the run's summary.",
    )


@dataclass(frozen=True)
class Approval:
    """What happened to an approval request: ``status`` is approved, rejected or expired."""

    status: str
    approver: str
    comment: str
    decided_at: str

    @property
    def approved(self) -> bool:
        return self.status == APPROVED

    def tags(self) -> dict[str, str]:
        """The ``brandtune.approval*`` tags recorded on the model version."""
        return {
            APPROVAL_TAG: self.status,
            f"{APPROVAL_TAG}.approver": self.approver,
            f"{APPROVAL_TAG}.comment": self.comment,
            f"{APPROVAL_TAG}.time": self.decided_at,
        }

    def line(self) -> str:
        """One line for the summary: who decided what, when, and why."""
        if self.status == EXPIRED:
            return f"approval expired at {self.decided_at}: nobody answered; the candidate was not promoted"
        why = f": {self.comment}" if self.comment else ""
        return f"{self.status} by {self.approver} at {self.decided_at}{why}"


def await_approval(
    brand: str, version: str, champion: str | None, summary: str, timeout_hours: float
) -> Approval:
    """Pause this flow run until a person approves or rejects promoting ``version``, or ``timeout_hours`` pass.

    Args:
        brand: The brand (for the form's title).
        version: The candidate version waiting for approval.
        champion: The champion it was evaluated against (None: it would be the first).
        summary: Markdown shown above the form: metrics, gate rules, report link.
        timeout_hours: How long to wait; then the request expires (not an error).

    Returns:
        The decision, also recorded as tags on the version.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.logging import get_run_logger

    from brandtune.registry import set_version_tags

    against = f"v{champion}" if champion else "no champion yet"
    title = f"## Promote {brand} v{version} to @champion? (evaluated against {against})\n\n"
    form = PromotionDecision.with_initial_data(description=title + summary)
    get_run_logger().info(
        "waiting up to %.4g h for a person to approve v%s of %s: open this flow run in the Prefect UI and "
        "press Resume",
        timeout_hours,
        version,
        brand,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=max(1, round(timeout_hours * 3600)), key="approve-promotion"
        )
        status = APPROVED if answer.decision == "approve" else REJECTED
        approval = Approval(status, answer.approver, answer.comment, _now())
    except FlowPauseTimeout:
        _run_on_after_expiry()
        approval = Approval(EXPIRED, "", "", _now())
    set_version_tags(brand, version, approval.tags())
    get_run_logger().info("v%s of %s: %s", version, brand, approval.line())
    return approval


def _run_on_after_expiry() -> None:
    """Put this flow run back to Running after its pause expired, so that it can finish as a completed run
    ("Approval expired") instead of Prefect's failure for a pause nobody answered."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.get_id(), Running(message="approval expired"), force=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
