"""The training's run log: what the trainer records for MLflow, written locally, never sent by the trainer.

The training process writes params, tags, metrics, images, artifacts, the dataset input and system metrics to an
append-only log in its run folder, ``<run_dir>/runlog/``:

- ``events.jsonl``: one JSON object a line, ``{"seq": n, "kind": ..., ...}``, ``seq`` increasing by one from 1
  across every training that writes to this folder (a resume continues the numbering). A ``run`` event names the
  MLflow run the events after it belong to.
- ``files/<seq>/``: the bytes an event refers to (the config as JSON, a validation image as PNG).

Lines are written whole with one ``write`` each (readers on this machine see them at once) and fsynced in batches
(every :data:`FSYNC_EVERY` seconds and on close): a crash loses at most the last second, and a torn last line is
cut off when the log is opened again. The forwarder (:mod:`brandtune.forwarder`) sends the log to MLflow from
another thread or process; this module never imports mlflow, so neither does the training process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

RUNLOG_DIR = "runlog"
EVENTS = "events.jsonl"
CURSOR = "cursor.json"
FILES = "files"
FSYNC_EVERY = 1.0
"""Seconds between fsyncs of the event file while the training writes."""
SYSTEM_EVERY = 5.0
"""Seconds between system-metric samples (MLflow's own monitor samples every 10 s; brandtune asked it for 5)."""


def log_dir(run_dir: Path) -> Path:
    """The run log folder of ``run_dir``."""
    return Path(run_dir) / RUNLOG_DIR


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Cursor:
    """What MLflow holds of a run log: every event up to ``seq``; the next events belong to run ``run_id``."""

    seq: int = 0
    run_id: str | None = None


def read_cursor(run_dir: Path) -> Cursor:
    try:
        data = json.loads((log_dir(run_dir) / CURSOR).read_text())
        return Cursor(int(data["seq"]), data.get("run_id"))
    except (OSError, ValueError, KeyError, TypeError):
        return Cursor()


def _cut_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a crash in the middle of a write); return the last sequence number."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
        logger.warning("run log %s: cut a torn last line (%d bytes)", path, len(data) - end)
    last = data[:end].rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return int(json.loads(last)["seq"]) if last else 0


def read_events(run_dir: Path, after: int = 0, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The whole events of ``run_dir``'s log with ``seq > after``, read from byte ``offset``; returns them and
    the offset after the last whole line (a line still being written is left for the next read)."""
    path = log_dir(run_dir) / EVENTS
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return [e for e in events if e["seq"] > after], offset + end


class RunLog:
    """The trainer's side of the run log (main process only): the tracker the loop and validation write to.

    Thread-safe: the system-metrics sampler writes from its own thread.
    """

    def __init__(self, run_dir: Path, run_id: str, system_metrics: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.dir = log_dir(self.run_dir)
        (self.dir / FILES).mkdir(parents=True, exist_ok=True)
        path = self.dir / EVENTS
        # (never below what MLflow acknowledged: a power cut may lose unsynced lines the forwarder already sent)
        self._seq = max(_cut_torn_tail(path), read_cursor(self.run_dir).seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._synced = time.monotonic()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._append("run", run_id=run_id)
        if system_metrics:
            self._start_system_metrics()

    # -- writing -------------------------------------------------------------------------------------------

    def _append(self, kind: str, **fields: Any) -> int:
        with self._lock:
            self._seq += 1
            line = json.dumps({"seq": self._seq, "kind": kind, **fields}, separators=(",", ":")) + "\n"
            os.write(self._fd, line.encode("utf-8"))
            if time.monotonic() - self._synced >= FSYNC_EVERY:
                os.fsync(self._fd)
                self._synced = time.monotonic()
            return self._seq

    def _file_dir(self) -> tuple[int, Path]:
        """A fresh folder for the files of the next event (named by the sequence number it will get)."""
        with self._lock:
            seq = self._seq + 1
        folder = self.dir / FILES / f"{seq:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        return seq, folder

    def log_params(self, params: dict[str, str]) -> None:
        """Params (MLflow keeps the first value of each: a resumed training's are not sent again)."""
        self._append("params", params={k: str(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._append("tags", tags={k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics of ``step``, stamped now (the stamp travels with them: a point sent twice is one point)."""
        self._append(
            "metrics", metrics={k: float(v) for k, v in metrics.items()}, step=int(step), ts=_now_ms()
        )

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """``data`` as the JSON artifact ``name`` (``config/train_config.json``)."""
        _, folder = self._file_dir()
        artifact_dir, _, file_name = name.rpartition("/")
        path = folder / file_name
        path.write_text(json.dumps(data, indent=2))
        self._append("artifact", path=str(path), artifact_path=artifact_dir or None)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or folder that stays where it is until sent (the adapter: written once, never changed)."""
        self._append("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def log_image(self, image: Image.Image, key: str, step: int) -> None:
        """An image of ``key`` at ``step`` (MLflow's image charts)."""
        _, folder = self._file_dir()
        path = folder / "image.png"
        image.save(path)
        self._append("image", path=str(path), key=key, step=int(step), ts=_now_ms())

    def log_dataset(self, path: Path, name: str, digest: str, context: str = "training") -> None:
        """The dataset folder as a run input (name, fingerprint as digest, local source)."""
        self._append("dataset", path=str(path), name=name, digest=digest, context=context)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as ``status`` and close the log (fsynced)."""
        self._stop_system_metrics()
        self._append("end", status=status, ts=_now_ms())
        self.close()

    def close(self) -> None:
        self._stop_system_metrics()
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    # -- system metrics --------------------------------------------------------------------------------------

    def _start_system_metrics(self) -> None:
        try:
            sampler = SystemSampler()
        except Exception as exc:  # optional: psutil may be missing; training goes on without it
            logger.info("system metrics unavailable: %s", exc)
            return

        def run() -> None:
            step = 0
            while not self._stop.wait(SYSTEM_EVERY):
                self.log_metrics(sampler.sample(), step)
                step += 1

        self._sampler = threading.Thread(target=run, name="brandtune-system-metrics", daemon=True)
        self._sampler.start()

    def _stop_system_metrics(self) -> None:
        self._stop.set()
        if self._sampler is not None and self._sampler is not threading.current_thread():
            self._sampler.join(timeout=10)
            self._sampler = None


class SystemSampler:
    """The system metrics MLflow's monitor records, under the same names (``system/...``): CPU, memory, disk and
    network with psutil, NVIDIA GPUs with pynvml when it is installed and finds one (as MLflow's)."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        net = psutil.net_io_counters()
        self._net0 = (net.bytes_recv / 1e6, net.bytes_sent / 1e6)
        psutil.cpu_percent()  # the first call starts the interval
        self._gpus: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no pynvml, no driver, no GPU: CPU metrics only
            self._gpus = []

    def _gpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, handle in enumerate(self._gpus):
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                out[f"gpu_{i}_memory_usage_percentage"] = round(memory.used / memory.total * 100, 1)
                out[f"gpu_{i}_memory_usage_megabytes"] = memory.used / 1e6
                out[f"gpu_{i}_utilization_percentage"] = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                power = self._nvml.nvmlDeviceGetPowerUsage(handle)
                out[f"gpu_{i}_power_usage_watts"] = power / 1000
                out[f"gpu_{i}_power_usage_percentage"] = (
                    power / self._nvml.nvmlDeviceGetEnforcedPowerLimit(handle) * 100
                )
            except Exception as exc:  # one failed reading costs that sample's GPU values, never the training
                logger.debug("GPU %d metrics: %s", i, exc)
        return out

    def sample(self) -> dict[str, float]:
        ps = self.psutil
        mem, disk, net = ps.virtual_memory(), ps.disk_usage(os.sep), ps.net_io_counters()
        values = {
            "cpu_utilization_percentage": ps.cpu_percent(),
            "system_memory_usage_megabytes": mem.used / 1e6,
            "system_memory_usage_percentage": mem.used / mem.total * 100,
            "disk_usage_percentage": disk.percent,
            "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
            "network_receive_megabytes": net.bytes_recv / 1e6 - self._net0[0],
            "network_transmit_megabytes": net.bytes_sent / 1e6 - self._net0[1],
            **self._gpu(),
        }
        return {f"system/{k}": float(v) for k, v in values.items()}


def pending(run_dir: Path) -> int:
    """How many events of ``run_dir``'s log are not yet acknowledged by MLflow."""
    events, _ = read_events(run_dir, read_cursor(run_dir).seq)
    return len(events)


def run_dirs(root: Path) -> Iterator[Path]:
    """The run folders under ``root`` that have a run log."""
    if root.is_dir():
        for path in sorted(root.rglob(f"{RUNLOG_DIR}/{EVENTS}")):
            yield path.parent.parent
