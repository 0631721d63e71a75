"""Prefect deployment steps of brandtune's own, named in ``prefect.yaml``.

Prefect runs any importable callable as a step, with the step's keys as keyword arguments. The brandtune package
is installed in the worker's environment, so these import from whatever folder the worker was started in.

Example (``prefect.yaml``)::

    pull:
      - brandtune.deploy_steps.enter_checkout:
          directory: "{{ $BRANDTUNE_REPO }}"
"""

from __future__ import annotations

import logging
from pathlib import Path

from brandtune.errors import ConfigError

logger = logging.getLogger(__name__)

REPO_ENV = "BRANDTUNE_REPO"
_FIX = (
    "set it to the brandtune checkout (the folder with flows/ and prefect.yaml) in the worker's environment and "
    "restart the worker"
)


class WorkerSetupError(ConfigError):
    """The worker running a flow run is not set up for brandtune (its environment lacks what the flows need)."""


def check_checkout(directory: str) -> Path:
    """The brandtune checkout ``directory`` names, or an error saying what to set on the worker.

    Args:
        directory: The value of ``$BRANDTUNE_REPO`` as Prefect templated it ("" when the variable is unset).

    Raises:
        WorkerSetupError: ``directory`` is empty, missing, or not a checkout with ``flows/`` and ``prefect.yaml``.
    """
    if not directory.strip():
        raise WorkerSetupError(f"{REPO_ENV} is not set on this worker: {_FIX}")
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise WorkerSetupError(f"{REPO_ENV}={directory} on this worker is not a folder: {_FIX}")
    missing = [name for name in ("flows/", "prefect.yaml") if not (path / name.rstrip("/")).exists()]
    if missing:
        raise WorkerSetupError(f"{REPO_ENV}={directory} on this worker has no {' or '.join(missing)}: {_FIX}")
    return path.resolve()


def enter_checkout(directory: str) -> dict[str, str]:
    """Pull step: check that ``directory`` is a brandtune checkout, then change into it.

    When the check fails, the flow run is marked Failed with the one-line message (also written to its logs), so
    the Prefect UI shows the fix instead of a crash with no reason.

    Args:
        directory: The checkout, normally ``"{{ $BRANDTUNE_REPO }}"``.

    Returns:
        What ``prefect.deployments.steps.set_working_directory`` returns: ``{"directory": <the new cwd>}``.

    Raises:
        WorkerSetupError: the worker's ``BRANDTUNE_REPO`` is unset or points elsewhere.
    """
    from prefect.deployments.steps import set_working_directory

    try:
        path = check_checkout(directory)
    except WorkerSetupError as exc:
        _fail_flow_run(str(exc))
        raise
    return set_working_directory(str(path))


def _fail_flow_run(message: str) -> None:
    """Log ``message`` to the flow run this process prepares (``PREFECT__FLOW_RUN_ID``) and mark it Failed with it.

    Prefect runs pull steps in a supervisor process whose traceback reaches only the worker's terminal, not the
    run's logs; without this the UI would show a crash and no reason.
    """
    from brandtune.provenance import flow_run_id as current_flow_run_id

    flow_run_id = current_flow_run_id()
    if not flow_run_id:
        return
    from datetime import UTC, datetime
    from uuid import UUID

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.exceptions import PrefectException
    from prefect.states import Failed

    try:
        run_id = UUID(flow_run_id)
        record = LogCreate(
            name=__name__,
            level=logging.ERROR,
            message=message,
            timestamp=datetime.now(UTC),
            flow_run_id=run_id,
        )
        with get_client(sync_client=True) as client:
            client.create_logs([record])
            client.set_flow_run_state(run_id, Failed(message=message), force=True)
    except (PrefectException, httpx.HTTPError, OSError, ValueError) as exc:
        # not fatal: the error raised next carries the same message to the worker's terminal
        logger.warning("could not report to flow run %s: %s", flow_run_id, exc)
