"""The forwarder: sends a training's run log (:mod:`brandtune.runlog`) to MLflow, outside the training process.

It reads the log from its last acknowledged sequence number and sends what follows in batches: consecutive metric
events as one ``log_batch`` (up to 1000 values), params, tags, artifacts, images and the dataset input one event
each. After each acknowledged send it writes its cursor (``runlog/cursor.json``: the last sequence number MLflow
holds and the run the next event belongs to) atomically. While the server is down it keeps the log on disk and
retries with backoff; the training never waits on it.

Exactly once: a forwarder killed between a send and its cursor write sends that batch again on restart. Every
event is idempotent, so the retry changes nothing: MLflow's SQL store (behind ``mlflow server`` as well) keeps
one row per metric point (key, timestamp, step, value) and silently drops a point it already holds - the
timestamp is the trainer's, written in the log, so a re-sent point is the same point; params already on the run
are skipped, tags and artifacts overwrite themselves, an image is stored under a name made from the run and its
sequence number (MLflow's own ``log_image`` makes a random one), and MLflow keeps one input per dataset.

Where it runs: in the launching process (:func:`brandtune.training.launch.launch`, so ``brandtune train`` and the
Prefect train task) as a thread; as a sidecar process (:mod:`brandtune.sidecar`) that the
training entry point starts when no launcher does (``python -m brandtune.training``, plain ``accelerate launch``);
or, for a direct library call of :func:`brandtune.training.train`, as a thread of the caller. ``python -m
brandtune.sidecar RUN_DIR`` (or ``brandtune doctor --fix``) sends what a training could not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, fsync_dir
from brandtune.runlog import CURSOR, Cursor, log_dir, read_cursor, read_events

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from brandtune.doctor import Finding
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
LOCK = "forwarder.lock"
MODE_ENV = "BRANDTUNE_FORWARDER"
"""Who forwards the run log of a training process: ``launcher`` (the launching process, a thread), ``sidecar``
(the training's main process starts ``python -m brandtune.sidecar``), unset: a thread of the process that calls
``train()``."""
WAIT_ENV = "BRANDTUNE_FORWARD_WAIT_S"
DEFAULT_WAIT_S = 120.0
MAX_METRICS = 1000  # MLflow's log_batch limit
MAX_BACKOFF_S = 8.0
POLL_S = 0.5


def wait_limit() -> float:
    """How long the end of a training waits for the forwarder to send the rest (env ``BRANDTUNE_FORWARD_WAIT_S``)."""
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        return DEFAULT_WAIT_S


def write_cursor(run_dir: Path, cursor: Cursor) -> None:
    """Replace the cursor atomically (a reader sees the old one or the new one, fsynced)."""
    atomic_write_json(log_dir(run_dir) / CURSOR, {"seq": cursor.seq, "run_id": cursor.run_id})
    fsync_dir(log_dir(run_dir))


def open_run(
    run_dir: Path,
    brand: str,
    run_name: str,
    resume_run_id: str | None,
    tracking_uri: str,
    abandoned: str | None = None,
) -> str:
    """Create (or, resuming, continue) the training's MLflow run and write its id to ``runlog/mlflow_run_id``,
    where the training process reads it. ``abandoned``, an earlier attempt's run in this folder that is not
    continued, is marked KILLED if it still says RUNNING. Needs the server: fails at once when it is down."""
    from brandtune.fsutil import atomic_write_text
    from brandtune.tracking import RunTracker

    if not _server_up(tracking_uri):  # fail at once, not after the client's minutes of retries
        raise ServerDownError(
            f"MLflow tracking server at {tracking_uri} does not answer (connection refused)"
        )
    tracker = RunTracker.start(brand, tracking_uri, resume_run_id, run_name, 1, system_metrics=False)
    if abandoned and abandoned != tracker.run_id:
        tracker.end_abandoned(abandoned)  # an earlier attempt in this folder that left no checkpoint
    atomic_write_text(log_dir(run_dir) / RUN_ID_FILE, tracker.run_id)
    return tracker.run_id


def launcher_run_id(run_dir: Path, limit: float) -> str:
    """The MLflow run id the launcher writes to ``runlog/mlflow_run_id`` while the training process starts (it
    opens the run meanwhile, and stops the training when it cannot), once it is there: at most ``limit`` s.

    Raises:
        TrainingError: no id in time (a training started with ``BRANDTUNE_FORWARDER=launcher`` by hand).
    """
    from brandtune.errors import TrainingError

    path, deadline = log_dir(run_dir) / RUN_ID_FILE, time.monotonic() + limit
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TrainingError(
                f"{MODE_ENV}=launcher but the launcher wrote no MLflow run id in {log_dir(run_dir)} within "
                f"{limit:.0f} s: start trainings with brandtune.training.launch, or unset it"
            )
        time.sleep(0.05)
    return path.read_text().strip()


def open_training_run(
    run_dir: Path,
    brand: str,
    run_name: str,
    resume_run_id: str | None,
    tracking_uri: str,
    abandoned: str | None = None,
) -> str:
    """:func:`open_run` for a training about to start: any failure is one :class:`TrainingError` line that says to
    start the tracking server (its text keeps the cause, so a Prefect retry sees a refused connection as
    transient)."""
    from brandtune.errors import TrainingError

    try:
        return open_run(run_dir, brand, run_name, resume_run_id, tracking_uri, abandoned)
    except Exception as exc:
        raise TrainingError(
            f"the training's MLflow run could not be created at {tracking_uri} ({type(exc).__name__}: "
            f"{str(exc)[:200]}); start the tracking server or point MLFLOW_TRACKING_URI at one, then train again"
        ) from exc


def _server_up(uri: str) -> bool:
    """Whether an HTTP tracking server answers its health check (a local store always counts as up)."""
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=2).status_code == 200
    except requests.exceptions.RequestException:
        return False


class ServerDownError(ConnectionError):
    """The tracking server did not answer its health check."""


class Forwarder:
    """Sends one run folder's log to MLflow; :meth:`pump` once, or :meth:`start` a thread that follows the log."""

    def __init__(self, run_dir: Path, tracking_uri: str) -> None:
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri
        self.cursor = read_cursor(self.run_dir)
        self._queue: deque[dict[str, Any]] = deque()
        self._offset = 0
        self._client: MlflowClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[int, int] = {}
        self.sent = 0
        self.last_kind: str | None = None
        self.down_since: float | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            from brandtune.tracking import connect

            connect(self.uri)
            self._client = MlflowClient(self.uri)
        return self._client

    # -- one pass ---------------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Events in the log that MLflow does not hold yet."""
        self._sync(read_cursor(self.run_dir))
        self._read()
        return len(self._queue)

    def _sync(self, disk: Cursor) -> None:
        """Take over what another forwarder of this folder acknowledged (a killed training's sidecar that is
        still sending, say): its cursor on disk is ahead of ours."""
        if disk.seq > self.cursor.seq:
            self.cursor = disk
            while self._queue and self._queue[0]["seq"] <= disk.seq:
                self._queue.popleft()

    def _read(self) -> None:
        after = self._queue[-1]["seq"] if self._queue else self.cursor.seq
        events, self._offset = read_events(self.run_dir, after, self._offset)
        self._queue.extend(events)

    def pump(self) -> int:
        """Send every whole event the log holds now; returns how many. Raises what the send raised (the events
        not acknowledged stay queued). One forwarder of a folder sends at a time (a lock file); another one
        waits for its next turn and starts from the cursor the first one left."""
        import fcntl

        with open(log_dir(self.run_dir) / LOCK, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            self._sync(read_cursor(self.run_dir))
            return self._pump()

    def _pump(self) -> int:
        self._read()
        done = 0
        while self._queue:
            if not _server_up(self.uri):
                raise ServerDownError(f"MLflow tracking server at {self.uri} does not answer")
            batch = self._take()
            self._send(batch)
            # a kill here: sent, not acknowledged; the retry is harmless
            fault_point(f"forwarder.after_send:{batch[0]['kind']}")
            last = batch[-1]
            self.last_kind = last["kind"]
            run_id = last.get("run_id") if last["kind"] == "run" else self.cursor.run_id
            self.cursor = Cursor(last["seq"], run_id)
            write_cursor(self.run_dir, self.cursor)
            for _ in batch:
                self._queue.popleft()
            done += len(batch)
        self.sent += done
        return done

    def _take(self) -> list[dict[str, Any]]:
        """The next batch: consecutive metric events (up to MLflow's batch limit), or one other event."""
        first = self._queue[0]
        if first["kind"] != "metrics":
            return [first]
        batch, count = [], 0
        for event in self._queue:
            if event["kind"] != "metrics" or (batch and count + len(event["metrics"]) > MAX_METRICS):
                break
            n = len(event["metrics"])
            batch.append(event)
            count += n
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        event = batch[0]
        kind, run_id = event["kind"], self.cursor.run_id
        if kind == "run":
            return
        if run_id is None:
            logger.warning("run log %s: event %d precedes any run; skipped", self.run_dir, event["seq"])
            return
        send = getattr(self, f"_send_{kind}", None)
        if send is None:
            logger.warning(
                "run log %s: unknown event kind %r (seq %d); skipped", self.run_dir, kind, event["seq"]
            )
            return
        try:
            send(run_id, batch)
        except FileNotFoundError as exc:  # a file of the run folder deleted meanwhile: nothing left to send
            logger.warning(
                "run log %s: event %d refers to a missing file (%s); skipped", self.run_dir, event["seq"], exc
            )
        except Exception as exc:
            from brandtune.registry import is_transient

            if is_transient(exc) or not _server_up(self.uri):
                raise
            tries = self._failures[event["seq"]] = self._failures.get(event["seq"], 0) + 1
            if tries < 3:
                raise
            logger.error(
                "run log %s: MLflow refused event %d (%s) %d times (%s: %s); skipped",
                self.run_dir, event["seq"], kind, tries, type(exc).__name__, exc,
            )  # fmt: skip

    def _send_metrics(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, e["ts"], e["step"]) for e in batch for k, v in e["metrics"].items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])

    def _send_params(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in batch[0]["params"].items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i : i + 100])

    def _send_tags(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in batch[0]["tags"].items()]
        for i in range(0, len(tags), 100):
            self.client.log_batch(run_id, tags=tags[i : i + 100])

    def _send_artifact(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        path = Path(batch[0]["path"])
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), batch[0]["artifact_path"])
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), batch[0]["artifact_path"])
        else:
            raise FileNotFoundError(path)

    def _send_image(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        """What ``MlflowClient.log_image(key=, step=)`` stores, under a name fixed by the run and the event."""
        import re
        import tempfile

        from mlflow.tracking.multimedia import compress_image_size
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
        from PIL import Image

        event = batch[0]
        with Image.open(event["path"]) as opened:
            image = opened.copy()
        name = f"{re.sub('/', '~', event['key'])}+step+{event['step']}+timestamp+{event['ts']}"
        name += f"+{uuid.uuid5(uuid.NAMESPACE_URL, run_id + '/' + str(event['seq']))}"
        with tempfile.TemporaryDirectory() as tmp:
            image.save(Path(tmp) / f"{name}.png")
            compress_image_size(image).save(Path(tmp) / f"{name}+compressed.webp")
            self.client.log_artifacts(run_id, tmp, "images")
        self.client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, True)

    def _send_dataset(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        from brandtune.tracking import RunTracker

        event = batch[0]
        tracker = RunTracker.__new__(RunTracker)  # its log_dataset, on this forwarder's client
        tracker.run_id, tracker.client = run_id, self.client
        tracker.log_dataset(Path(event["path"]), event["name"], event["digest"], event["context"])

    def _send_end(self, run_id: str, batch: list[dict[str, Any]]) -> None:
        self.client.set_terminated(run_id, status=batch[0]["status"], end_time=batch[0]["ts"])

    # -- following the log ------------------------------------------------------------------------------------

    def step(self) -> float:
        """One pass that never raises; returns how long to wait before the next (backoff while failing)."""
        try:
            self.pump()
        except Exception as exc:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                logger.warning(
                    "could not send to MLflow at %s (%s: %s): the run log keeps %d event(s) of %s; retrying",
                    self.uri, type(exc).__name__, str(exc)[:200], len(self._queue), self.run_dir,
                )  # fmt: skip
            return min(MAX_BACKOFF_S, 0.5 * 2 ** min(6, int((now - self.down_since) // 2)))
        if self.down_since is not None:
            logger.info("MLflow at %s is back: forwarding %s again", self.uri, self.run_dir)
            self.down_since = None
        return POLL_S

    def start(self) -> Forwarder:
        """Follow the log in a daemon thread until :meth:`finish`."""

        def run() -> None:
            while not self._stop.wait(self.step()):
                pass

        self._thread = threading.Thread(target=run, name="brandtune-forwarder", daemon=True)
        self._thread.start()
        return self

    def finish(self, wait_s: float | None = None) -> bool:
        """Stop following and send the rest, waiting at most ``wait_s`` seconds; returns whether all was sent.
        What is not sent stays in the log (with a message that says how to send it later)."""
        wait_s = wait_limit() if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=wait_s)
            if self._thread.is_alive():  # inside a client call that retries: it still owns the queue
                return self._unsent(wait_s)
        while True:
            delay = self.step()
            if self.down_since is None and not self.pending():
                return True
            if time.monotonic() + delay > deadline:
                return self._unsent(wait_s)
            time.sleep(delay)

    def _unsent(self, wait_s: float) -> bool:
        logger.warning(
            "MLflow at %s still unreachable after %.0f s: %d event(s) of the training stay in %s; send them "
            "later with `python -m brandtune.sidecar %s` or `brandtune doctor --fix`",
            self.uri, wait_s, len(self._queue), log_dir(self.run_dir), self.run_dir,
        )  # fmt: skip
        return False


def send(run_dir: Path, tracking_uri: str | None = None, wait_s: float | None = None) -> bool:
    """Send what ``run_dir``'s log holds and MLflow does not (after an outage); returns whether all was sent."""
    from brandtune.settings import Settings

    return Forwarder(run_dir, tracking_uri or Settings.from_env().tracking_uri).finish(wait_s)


def check(settings: Settings, *, brand: str | None = None, fix: bool = False) -> list[Finding]:
    """Doctor check: run folders whose run log holds events MLflow does not (an outage outlasted the training);
    ``--fix`` sends them."""
    from brandtune.doctor import Finding
    from brandtune.runlog import pending, run_dirs

    root = settings.home / "runs" / brand if brand else settings.home / "runs"
    findings = []
    for run_dir in run_dirs(root):
        if (count := pending(run_dir)) == 0:
            continue
        fixed = fix and send(run_dir, settings.tracking_uri, wait_s=30.0)
        findings.append(
            Finding(
                check="run-log",
                subject=str(log_dir(run_dir)),
                problem=f"{count} event(s) of the training's run log never reached MLflow",
                repair="--fix sends them (python -m brandtune.sidecar RUN_DIR does the same)",
                fixed=fixed,
            )
        )
    return findings
