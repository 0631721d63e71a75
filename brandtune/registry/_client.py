"""Talking to the MLflow tracking server: client, fast failure, retries, readable errors.

MLflow's HTTP client retries a refused connection 7 times with a backoff factor of 2 and waits up to 120 s per
request, so an unreachable server hangs a command for minutes. :func:`client` lowers those defaults (unless the
user set them) and :func:`call` retries transient failures itself with a short exponential backoff before raising a
:class:`~brandtune.errors.RegistryError` that names the URI and how to start a server.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from brandtune.errors import RegistryError
from brandtune.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's own per-request retry policy, lowered so that brandtune's retry loop (which logs and names the URI) is
# the one that decides; a user's explicit setting wins.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
ATTEMPTS = 3
BASE_DELAY_S = 0.5

START_SERVER_HINT = (
    "Start the local server with `brandtune mlflow-ui` (or `make mlflow-ui`), or point MLFLOW_TRACKING_URI at a "
    "running one (unset it to use the local sqlite store under BRANDTUNE_HOME)."
)
_TRANSIENT_MARKERS = (
    "connection refused",
    "max retries exceeded",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remote end closed",
    "timed out",
    "timeout exception",
    "temporarily unavailable",
    "too many 500 error responses",
    "bad gateway",
    "service unavailable",
)


def http_defaults() -> None:
    """Lower MLflow's HTTP retry/timeout defaults for this process unless they are set already."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def client(settings: Settings | None = None) -> MlflowClient:
    """An ``MlflowClient`` on the settings' tracking URI (creating a local sqlite store's folder)."""
    import mlflow

    from brandtune.tracking import connect

    settings = settings or Settings.from_env()
    http_defaults()
    connect(settings.tracking_uri)
    return mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a server that is down, restarting or overloaded (worth a retry)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError
        ):
            return True
        text = str(seen).lower()
        if any(marker in text for marker in _TRANSIENT_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unreachable(uri: str, exc: BaseException, what: str) -> RegistryError:
    """The error for a tracking server that did not answer."""
    return RegistryError(
        f"Could not {what}: the MLflow tracking server at {uri} is unreachable or failing "
        f"({type(exc).__name__}: {_short(exc)}). {START_SERVER_HINT}"
    )


def call(
    fn: Callable[[], T], *, uri: str, what: str, attempts: int = ATTEMPTS, base_delay: float = BASE_DELAY_S
) -> T:
    """Run ``fn`` and retry transient failures with exponential backoff (0.5 s, 1 s, ...).

    Args:
        fn: The MLflow call.
        uri: The tracking URI (named in the final error).
        what: What the call does, for messages ("register acme-lora").
        attempts: Tries in all.
        base_delay: Delay before the second try; doubled each time.

    Raises:
        RegistryError: The server stayed unreachable after ``attempts`` tries.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise unreachable(uri, exc, what) from exc
            delay = base_delay * 2 ** (attempt - 1)
            logger.warning(
                "%s: %s unreachable (%s); retry %d/%d in %.1fs",
                what,
                uri,
                _short(exc),
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, with the URI and a fix, when an ``http(s)://`` tracking server does not answer ``/health``."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.exceptions.RequestException as exc:
        raise unreachable(uri, exc, "reach the model registry") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find(fn: Callable[[], T], *, uri: str, what: str) -> T | None:
    """:func:`call` ``fn``, or None when MLflow answers that the run, model, version or alias does not exist.

    Raises:
        RegistryError: The server stayed unreachable.
    """
    try:
        return call(fn, uri=uri, what=what)
    except RegistryError:
        raise
    except Exception as exc:
        if not is_not_found(exc):
            raise
        return None


#: MLflow's stores report an unknown alias as INVALID_PARAMETER_VALUE with this message, not as a missing resource.
_ALIAS_NOT_FOUND = re.compile(r"Registered model alias \S+ not found")


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow exception means an unknown model, version or alias: RESOURCE_DOES_NOT_EXIST, or the one
    parameter error MLflow raises for an unknown alias. A server or database error whose text happens to say "not
    found" is not (it is reported as the failure it is)."""
    code: Any = getattr(exc, "error_code", "")
    if code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}:
        return True
    return code == "INVALID_PARAMETER_VALUE" and _ALIAS_NOT_FOUND.search(str(exc)) is not None
