"""Where a training writes, and what it continues.

Every training invocation gets a folder of its own, ``<home>/runs/<brand>/<config hash>-<n>`` (n = 1, 2, ...), with
``run.json`` naming the invocation that made it. So a new training never writes into, resumes from or continues
the MLflow run of an earlier one. It continues a checkpoint in only two cases:

- a retry of the same invocation (a Prefect task or flow-run retry keeps the flow run's id, which is the
  invocation id): it goes back into its own folder and resumes its own newest checkpoint; a retry whose training
  had finished gets the finished result back;
- the user asks: ``resume='latest'`` (the newest unfinished run of this config with a complete checkpoint) or
  ``resume=<checkpoint or run folder>``.

An explicit ``output_dir`` is used as it is. A new invocation there refuses to start over another invocation's
unfinished checkpoints (resume it, or choose another folder) and clears a finished training's leftovers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.fsutil import atomic_write_json
from brandtune.training import checkpoint as ckpt
from brandtune.training.result import TrainResult, read_result_file, write_result_file

if TYPE_CHECKING:
    from brandtune.settings import Settings
    from brandtune.training.plan import TrainJob

logger = logging.getLogger(__name__)

#: Set by :func:`brandtune.training.launch.launch` for its child: the run folder it chose and holds the lock of.
CHOICE_ENV = "BRANDTUNE_RUN_CHOICE"
RUN_FILE = "run.json"
RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunChoice:
    """Where a training goes and what it continues.

    Attributes:
        run_dir: The run folder.
        resume_from: The checkpoint folder to continue from (None: start at step 0).
        why: ``new``, ``retry`` (same invocation) or ``resume`` (the user asked).
        finished: The folder holds this invocation's finished training (its ``result.json`` is the result).
    """

    run_dir: Path
    resume_from: Path | None
    why: str
    finished: bool = False
    note: str = ""
    clear: bool = False  # a finished training's leftovers in an explicit output_dir go when it is claimed

    def describe(self) -> str:
        """One line for the training log: where it trains and what it continues."""
        if self.finished:
            return f"{self.note}: its training in {self.run_dir} had finished; returning that result"
        start = f"continuing from {self.resume_from}" if self.resume_from else "starting from step 0"
        if self.why == "retry":
            return f"{self.note} in {self.run_dir}: {start}"
        if self.why == "resume":
            return f"resuming as asked in {self.run_dir}: {start}"
        return f"{self.note + '; ' if self.note else ''}new training in {self.run_dir}: {start}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_dir": str(self.run_dir),
                "resume_from": str(self.resume_from) if self.resume_from else None,
                "why": self.why,
                "note": self.note,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RunChoice:
        data = json.loads(text)
        resume = data.get("resume_from")
        return cls(
            Path(data["run_dir"]), Path(resume) if resume else None, data["why"], note=data.get("note", "")
        )


def claim(choice: RunChoice, job: TrainJob) -> None:
    """Make ``choice.run_dir`` this invocation's: clear leftovers and write ``run.json``. Call it holding the
    folder's lock (:mod:`brandtune.training.lock`), in one process."""
    if choice.clear:
        shutil.rmtree(choice.run_dir / CHECKPOINTS, ignore_errors=True)
        (choice.run_dir / RESULT_FILE).unlink(missing_ok=True)
    if choice.why == "new":
        write_run_file(
            choice.run_dir,
            invocation_id=job.config.invocation_id,
            config_hash=job.run_hash,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            pid=os.getpid(),
            mlflow_run_id=None,
        )
    else:
        write_run_file(choice.run_dir, invocation_id=job.config.invocation_id)


def new_invocation_id() -> str:
    """A fresh invocation id for a training started outside Prefect (a CLI call, a library call)."""
    return f"local-{uuid.uuid4().hex[:16]}"


def read_run_file(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_file(run_dir: Path, **fields: Any) -> None:
    """Update ``run.json`` with ``fields`` (invocation, config hash, MLflow run...)."""
    atomic_write_json(run_dir / RUN_FILE, {**read_run_file(run_dir), **fields})


def _numbered(root: Path, run_hash: str) -> list[tuple[int, Path]]:
    """The run folders of one config under ``root``, oldest first; a folder of the older layout
    (``<hash>`` alone) counts as number 0."""
    pattern = re.compile(rf"{re.escape(run_hash)}-(\d+)")
    found = [(0, root / run_hash)] if (root / run_hash).is_dir() else []
    if root.is_dir():
        found += [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := pattern.fullmatch(p.name))]
    return sorted(found)


def allocate(root: Path, run_hash: str) -> Path:
    """Create the next free run folder ``<root>/<hash>-<n>`` (atomically: ``mkdir`` fails if it exists)."""
    root.mkdir(parents=True, exist_ok=True)
    n = max((i for i, _ in _numbered(root, run_hash)), default=0) + 1
    while True:
        folder = root / f"{run_hash}-{n}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            n += 1
    return folder


def checkpoint_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT_FILE).is_file()


def choose_run_dir(job: TrainJob, settings: Settings) -> RunChoice:
    """Decide the run folder of ``job`` and the checkpoint it continues (see the module docstring).

    It only reads, except that a new run folder is created (empty): :func:`claim` makes the choice the
    invocation's once the folder's lock is held. Call it in one process (the launcher, or the main process).

    Raises:
        TrainingError: a resume that cannot be honoured (broken or foreign checkpoint, finished run), or an
            explicit output_dir that holds another invocation's unfinished training.
    """
    cfg = job.config
    if cfg.resume not in (None, "latest"):
        return _resume_path(job, Path(cfg.resume))
    if cfg.output_dir is not None:
        return _in_output_dir(job, Path(cfg.output_dir))
    root = settings.home / "runs" / job.brand.name
    note = ""
    if cfg.resume == "latest":
        for _, folder in reversed(_numbered(root, job.run_hash)):
            found = None if is_finished(folder) else ckpt.latest_valid(folder / CHECKPOINTS)
            if found is not None:
                _check_foreign(job, found)
                return RunChoice(folder, found, "resume")
        note = f"resume=latest: no complete checkpoint of an unfinished run of this config under {root}"
    elif cfg.invocation_id is not None:
        for _, folder in reversed(_numbered(root, job.run_hash)):
            if read_run_file(folder).get("invocation_id") == cfg.invocation_id:
                return _retry(folder, cfg.invocation_id)
    return RunChoice(allocate(root, job.run_hash), None, "new", note=note)


def _retry(folder: Path, invocation_id: str) -> RunChoice:
    """Back into the folder this invocation claimed: every checkpoint there is its own, or the one it was asked
    to resume from (a new claimant clears or refuses anything else)."""
    note = f"retry of invocation {invocation_id}"
    if is_finished(folder):
        return RunChoice(folder, None, "retry", finished=True, note=note)
    return RunChoice(folder, ckpt.latest_valid(folder / CHECKPOINTS), "retry", note=note)


def _check_foreign(job: TrainJob, folder: Path) -> None:
    """Refuse a checkpoint that another config wrote (its weights would not fit, or mean something else)."""
    written_by = checkpoint_state(folder).get("config_hash")
    if written_by != job.run_hash:
        raise TrainingError(
            f"checkpoint {folder} was written by a training of another config (hash {written_by}, this one "
            f"{job.run_hash}): resume it with the config it was made with (see its MLflow run's "
            "config/train_config.json), or drop resume to train anew"
        )


def _resume_path(job: TrainJob, path: Path) -> RunChoice:
    if (path / ckpt.MARKER).is_file():
        folder, run_dir = path, path.parent.parent
    else:
        folder, run_dir = ckpt.latest_valid(path / CHECKPOINTS), path
        if folder is None:
            raise TrainingError(
                f"resume {path}: neither a checkpoint folder (no {ckpt.MARKER} marker) nor a run folder with a "
                f"complete checkpoint under {CHECKPOINTS}/; give <run>/checkpoints/checkpoint-<step>"
            )
    if (problem := ckpt.verify(folder)) is not None:
        raise TrainingError(f"resume {folder}: the checkpoint is broken ({problem}); give an earlier one")
    if job.config.output_dir is not None and Path(job.config.output_dir).absolute() != run_dir.absolute():
        raise TrainingError(
            f"resume {folder} continues the run in {run_dir}, not output_dir {job.config.output_dir}; "
            "drop output_dir or give a checkpoint under it"
        )
    if is_finished(run_dir):
        raise TrainingError(
            f"resume {folder}: the training in {run_dir} finished ({RESULT_FILE}); nothing to resume. "
            "Train anew without resume"
        )
    _check_foreign(job, folder)
    return RunChoice(run_dir, folder, "resume")


def _in_output_dir(job: TrainJob, out: Path) -> RunChoice:
    cfg = job.config
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume == "latest":
        found = None if is_finished(out) else ckpt.latest_valid(out / CHECKPOINTS)
        if found is not None:
            _check_foreign(job, found)
            return RunChoice(out, found, "resume")
        note = f"resume=latest: no complete checkpoint of an unfinished training in {out}"
        return _fresh(job, out, note)
    recorded = read_run_file(out)
    if cfg.invocation_id is not None and recorded.get("invocation_id") == cfg.invocation_id:
        return _retry(out, cfg.invocation_id)
    return _fresh(job, out)


def _fresh(job: TrainJob, out: Path, note: str = "") -> RunChoice:
    """A new training in an explicit output_dir: refuse over unfinished work, clear a finished one's leftovers."""
    recorded = read_run_file(out)
    leftovers = ckpt.list_checkpoints(out / CHECKPOINTS)
    if not is_finished(out) and ckpt.latest_valid(out / CHECKPOINTS) is not None:
        raise TrainingError(
            f"output_dir {out} holds checkpoints of another, unfinished training (invocation "
            f"{recorded.get('invocation_id') or 'unknown'}, MLflow run {recorded.get('mlflow_run_id') or 'unknown'}): "
            "continue it with resume='latest' (--resume latest), or choose another output_dir"
        )
    clear = bool(leftovers) or is_finished(out)
    if clear:
        note = (
            note + "; " if note else ""
        ) + "output_dir held a finished training: its checkpoints are cleared"
    return RunChoice(out, None, "new", note=note, clear=clear)


def write_result(run_dir: Path, result: TrainResult) -> None:
    """Write ``result.json``: the run folder holds a finished training from now on."""
    write_result_file(run_dir / RESULT_FILE, result)


def read_result(run_dir: Path) -> TrainResult:
    """The result of a finished run, from its ``result.json``, validated.

    Raises:
        TrainingError: ``result.json`` is missing or not a valid result.
    """
    return read_result_file(run_dir / RESULT_FILE, f"the finished training in {run_dir}")
