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
    from prefect.flow_runs import pause_flow_run
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    from brandtune.registry import set_version_tags

    against = f"v{champion}" if champion else "no champion yet"
    title = f"## Promote {brand} v{version} to @champion? (evaluated against {against})\n\n"
    form = PromotionDecision.with_initial_data(description=title + summary)
    seconds = max(1.0, timeout_hours * 3600)
    get_run_logger().info(
        "waiting up to %.4g h for a person to approve v%s of %s: open this flow run in the Prefect UI and "
        "press Resume",
        timeout_hours,
        version,
        brand,
    )
    with _Expiry(str(flow_run.get_id()), seconds) as expiry:
        # Prefect fails a pause that reaches its own timeout; the expiry resumes it first, so that the run can end
        # in the named state "Approval expired" instead. The margin is for a worker that died meanwhile.
        answer = pause_flow_run(
            wait_for_input=form, timeout=round(seconds + _MARGIN_S), key="approve-promotion"
        )
    if expiry.fired:
        approval = Approval(EXPIRED, "", "", _now())
    else:
        status = APPROVED if answer.decision == "approve" else REJECTED
        approval = Approval(status, answer.approver, answer.comment, _now())
    set_version_tags(brand, version, approval.tags())
    get_run_logger().info("v%s of %s: %s", version, brand, approval.line())
    return approval


#: Prefect's own pause timeout is this much longer than the approval's, so the expiry always acts first.
_MARGIN_S = 3600.0
_EXPIRED_INPUT = {
    "decision": "reject",
    "approver": "brandtune",
    "comment": "no decision in time: approval expired",
}


class _Expiry:
    """Resumes the paused flow run when the approval's time is up (with an input that marks it expired).

    ``fired`` is True only when this resume is what ended the pause: a person's answer that came first makes the
    resume fail (the run is no longer paused), and then it stays False. Both sides decide under one lock.
    """

    def __init__(self, flow_run_id: str, seconds: float) -> None:
        import threading

        self.flow_run_id = flow_run_id
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        from prefect.flow_runs import resume_flow_run

        with self._lock:
            self.fired = True
            try:
                resume_flow_run(self.flow_run_id, run_input=_EXPIRED_INPUT)
            except Exception as exc:  # a person's answer got there first: theirs counts
                logger.info("approval answered before it expired (%s)", exc)
                self.fired = False

    def __enter__(self) -> _Expiry:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:  # an expiry in flight finishes deciding before anyone reads `fired`
            pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
