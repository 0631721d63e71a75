"""MLflow tracking of a training run: one run, batched metrics, images, the dataset as an input.

Only the main process talks to MLflow. Metrics are buffered and sent with one ``log_batch`` call every few steps
(one HTTP call per value is what makes trackers slow on remote servers).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

MAX_PARAM_LEN = 500


def connect(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` (creating the folder of a local sqlite store)."""
    import mlflow

    from brandtune import _quiet

    _quiet.install()  # before the first store access: a new sqlite store announces its migrations
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)


def experiment_for(brand: str, tracking_uri: str) -> str:
    """The id of experiment ``brandtune/<brand>``, created on first use (artifacts under BRANDTUNE_HOME)."""
    import mlflow

    from brandtune.settings import Settings

    name = f"brandtune/{brand}"
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Settings.from_env().artifacts_dir).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """Top-level config values as MLflow params; long values are cut (the full config is an artifact)."""
    out = {}
    for key, value in config.items():
        text = str(value)
        out[key] = text if len(text) <= MAX_PARAM_LEN else text[: MAX_PARAM_LEN - 3] + "..."
    return out


class RunTracker:
    """Logs one training run to MLflow. Create it on the main process only."""

    def __init__(self, run_id: str, tracking_uri: str, flush_every: int = 10) -> None:
        import mlflow

        self.run_id = run_id
        self.client = mlflow.MlflowClient(tracking_uri)
        self.flush_every = flush_every
        self._pending: list[Any] = []

    @classmethod
    def start(
        cls,
        brand: str,
        tracking_uri: str,
        run_id: str | None,
        run_name: str,
        flush_every: int,
        system_metrics: bool = True,
    ) -> RunTracker:
        """Continue ``run_id`` (or ``MLFLOW_RUN_ID``) if given, else create a new run."""
        import mlflow

        connect(tracking_uri)
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        client = mlflow.MlflowClient(tracking_uri)
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_for(brand, tracking_uri), run_name=run_name)
            run_id = run.info.run_id
        tracker = cls(run_id, tracking_uri, flush_every)
        if system_metrics:
            tracker._start_system_metrics()
        return tracker

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, samples_before_logging=1)
            self._monitor.start()
        except Exception as exc:  # optional: psutil/pynvml may be missing; training goes on without it
            logger.info("system metrics unavailable: %s", exc)
            self._monitor = None

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._pending) >= self.flush_every * max(1, len(metrics)):
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[i : i + 1000])
        self._pending = []

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, image: Image.Image, key: str, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_dataset(self, path: Path, name: str, digest: str, context: str = "training") -> None:
        """Record the dataset folder as a run input (name, fingerprint as digest, local source)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow registers its local source twice and warns that it picks one
            warnings.filterwarnings(
                "ignore", "The specified dataset source can be interpreted in multiple ways"
            )
            source = resolve_dataset_source(str(path))
        dataset = MetaDataset(source, name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def end_abandoned(self, run_id: str) -> None:
        """Mark an earlier attempt's run KILLED if it still says RUNNING (its process died before a checkpoint)."""
        from mlflow.exceptions import MlflowException

        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED")
                logger.info("MLflow run %s of an attempt that left no checkpoint: marked KILLED", run_id)
        except MlflowException as exc:  # a run deleted meanwhile, say: nothing to end, the training goes on
            logger.info("could not end the abandoned MLflow run %s: %s", run_id, exc)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        if getattr(self, "_monitor", None) is not None:
            self._monitor.finish()
        self.client.set_terminated(self.run_id, status=status)


def finish_quietly(tracker: RunTracker, status: str) -> None:
    """End ``tracker``'s run as ``status`` while another error is on its way up: a failure here (an MLflow server
    that is down, say) is logged and never replaces that error."""
    try:
        tracker.finish(status)
    except Exception as exc:  # the error in flight is what the user must see; this one is secondary
        logger.error(
            "could not mark MLflow run %s %s (%s: %s); the training's own error follows",
            tracker.run_id,
            status,
            type(exc).__name__,
            exc,
        )
