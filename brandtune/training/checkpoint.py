"""Resumable checkpoints without pickle.

A checkpoint folder ``checkpoints/checkpoint-<step>/`` holds the trainable (LoRA) weights, their moving average
(``ema.safetensors``, when the training keeps one), the optimizer state and each process's RNG state as
safetensors, and the LR-scheduler and loop state as JSON. It is written under a temporary name, then ``COMPLETE``
(step and a sha256 of every file) is written, then the folder is renamed. A folder without a valid ``COMPLETE``, or
whose files do not match it, is skipped with a warning and never loaded.

``state.json`` records what a resume must match beyond the config hash: the number of training processes
(``world_size``), which decides which examples each process draws and how many images an optimizer step sees.
A write that fails (a full disk) removes its temporary folder and stops the training with one line; the
checkpoints already there stay as they were.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.faults import fault_point
from brandtune.fsutil import atomic_write_json, replace_dir, sha256_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
PREFIX = "checkpoint-"
EMA_FILE = "ema.safetensors"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = meta["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))


def write_checkpoint(
    root: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    loop_state: dict[str, Any],
    rng_files: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]],
    keep: int,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` (with ``ema``, the EMA of the trainable weights, when given) and
    drop the oldest beyond ``keep``. Main process only."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors"
        )
        fault_point("train.checkpoint_write")  # a test's full disk, half way through the folder
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / EMA_FILE)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "scheduler.json").write_text(json.dumps(scheduler_state, default=float))
        (tmp / "state.json").write_text(json.dumps({**loop_state, "step": step}))
        for rank, (tensors, meta) in rng_files.items():
            save_file(tensors, tmp / f"rng-{rank}.safetensors")
            (tmp / f"rng-{rank}.json").write_text(json.dumps(meta))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        atomic_write_json(tmp / MARKER, {"step": step, "files": files})
        replace_dir(tmp, final)  # an earlier checkpoint of this step stays until the new one is in place
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint behind
        raise write_failed(root, step, exc) from exc
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_failed(root: Path, step: int, exc: OSError) -> TrainingError:
    """The one-line error of a checkpoint that could not be written (a full disk says so)."""
    kept = list_checkpoints(root)
    kept_note = f"the newest one kept is {kept[-1].name}" if kept else "no earlier checkpoint exists"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TrainingError(
            f"checkpoint {step} could not be written to {root}: no space left on device; free disk space there "
            f"and resume (resume: latest); {kept_note}"
        )
    return TrainingError(
        f"checkpoint {step} could not be written to {root}: {exc.strerror or exc}; fix that folder and resume "
        f"(resume: latest); {kept_note}"
    )


def check_world(folder: Path, world_size: int) -> None:
    """Refuse to continue ``folder`` with another number of training processes.

    A checkpoint's batches, per-process RNG states and learning-rate schedule were made for the number of processes
    that wrote it: each process draws micro-step ``m``'s examples by its rank, and an optimizer step sees
    ``batch x processes x accumulation`` images. accelerate could load the (whole, unsharded) weights and optimizer
    state into another number of processes, but the continued run would then train on other batches than the one
    it resumes, so brandtune refuses rather than resume inexactly. A checkpoint written before ``world_size`` was
    recorded is accepted.

    Raises:
        TrainingError: the checkpoint records another ``world_size``.
    """
    try:
        recorded = json.loads((folder / "state.json").read_text()).get("world_size")
    except (OSError, ValueError, AttributeError):
        return  # verify() has judged the folder; an unreadable state fails where it is read
    if isinstance(recorded, int) and recorded != world_size:
        raise TrainingError(
            f"checkpoint {folder} was written by {recorded} training process(es) but this resume runs "
            f"{world_size}: resume with num_processes {recorded} (the same accelerate config), or train anew "
            "without resume"
        )


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root`` that carry a marker, oldest first (not yet verified)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


#: Files every checkpoint holds; a marker that does not cover them all is not trusted.
REQUIRED_FILES = (
    "trainable.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "state.json",
)


def verify(folder: Path) -> str | None:
    """``None`` when ``folder`` is a complete, intact checkpoint; else the reason it is not.

    The marker must be a JSON object whose ``step`` is the folder's and whose ``files`` give a sha256 for every
    required file (plain names inside the folder); every listed file must exist and match.
    """
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {MARKER} marker ({exc})"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
        return f"{MARKER} is not a marker of this format (no file list)"
    if marker.get("step") != int(folder.name[len(PREFIX) :]):
        return f"{MARKER} names step {marker.get('step')!r}, not this folder's"
    if missing := [name for name in REQUIRED_FILES if name not in files]:
        return f"{MARKER} does not cover {', '.join(missing)}"
    for name, digest in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256 (corrupt or half-written)"
    return None


def latest_valid(root: Path) -> Path | None:
    """The newest checkpoint that verifies. Each one passed over (broken, or newer than the one returned, or a
    ``checkpoint-*`` folder that is not named by a step) is logged as a warning naming it and why."""
    for other in _misnamed(root):
        logger.warning("skipping %s: not a checkpoint folder (checkpoint-<step>); it is never loaded", other)
    for folder in reversed(list_checkpoints(root)):
        problem = verify(folder)
        if problem is None:
            return folder
        logger.warning("skipping checkpoint %s: %s", folder, problem)
    return None


def _misnamed(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir() and not p.name[len(PREFIX) :].isdigit())


def read_checkpoint(folder: Path, rank: int) -> dict[str, Any]:
    """Everything a process needs to continue from ``folder`` (verified by the caller)."""
    from safetensors.torch import load_file

    opt_meta = json.loads((folder / "optimizer.json").read_text())
    rng_rank = rank if (folder / f"rng-{rank}.safetensors").is_file() else 0
    return {
        "trainable": load_file(folder / "trainable.safetensors"),
        "ema": load_file(folder / EMA_FILE) if (folder / EMA_FILE).is_file() else None,
        "optimizer": _unflatten_optimizer(load_file(folder / "optimizer.safetensors"), opt_meta),
        "scheduler": json.loads((folder / "scheduler.json").read_text()),
        "state": json.loads((folder / "state.json").read_text()),
        "rng": (
            load_file(folder / f"rng-{rng_rank}.safetensors"),
            json.loads((folder / f"rng-{rng_rank}.json").read_text()),
        ),
    }
