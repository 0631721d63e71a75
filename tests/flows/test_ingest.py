"""The ingest flow (flows/ingest.py): a dataset and its summary artifact, and a failing task that names its input."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_helpers import _artifact

pytestmark = pytest.mark.slow


def test_ingest_flow_and_a_failing_task_explains_itself(prefect_harness: None, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    result = ingest_flow(brand="acme")
    assert result["num_images"] == 24
    assert result["fingerprint"] in _artifact("ingest-acme-summary").data

    missing = tmp_path / "no-such-folder"
    state = ingest_flow(brand="acme", sources=[str(missing)], return_state=True)
    assert state.is_failed()
    assert str(missing) in state.message, state.message
