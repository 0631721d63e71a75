"""Prefect tasks shared by the flows: each one calls one ``brandtune`` function and returns its typed result.

- The stage tasks (ingest, train, register, evaluate, generate) return ``(result, seconds)``: the library's result and
  the seconds of work inside the task, which the flow summaries show. Prefect 3 records task run durations too,
  but writes task runs through its event pipeline after the fact, so a summary published at the end of the flow
  run cannot read them yet.

- Retries (with exponential backoff) only where the failure can be transient. :func:`retry_worthy` is the one rule
  for every task: a server that is down or overloaded (:func:`brandtune.registry.is_transient`) or a training
  process killed from outside (a preempted node, the OOM killer) is retried; a deterministic failure - a
  ``ConfigError``, a NaN loss, any other ``BrandtuneError`` - never is.
- Every task and every flow has a time-out (:class:`flows._params.Timeouts`: generous defaults, one environment
  variable each), and the wait for a ``brandtune-gpu`` slot is bounded too (``BRANDTUNE_GPU_WAIT_S``).
- ``cache_policy=NO_CACHE`` everywhere: every task has side effects (datasets, runs, aliases, images).
- Training runs as a child process in its own process group (:func:`brandtune.training.launch.launch`); its log is
  streamed into the Prefect run log; a cancel, timeout or crash kills the whole tree. The flow run's id is the
  training's invocation: a retry of the task or of the flow run continues its own last checkpoint (and MLflow
  run); another flow run never does. A global concurrency limit (``brandtune-gpu``) keeps two trainings from
  sharing one GPU, whichever deployment started them.
- Before training, :func:`check_unchanged_task` asks the registry whether a version was trained with this exact
  identity (dataset + resolved config + base); then the flow trains nothing unless forced.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from brandtune.errors import ConfigError, TrainingError
from flows._params import TIMEOUTS, Timeouts

if TYPE_CHECKING:
    from brandtune.config import EvalConfig, GenerateConfig, TrainConfig
    from brandtune.evaluation.job import EvalOutcome
    from brandtune.generation import GenerationResult
    from brandtune.ingest import IngestResult
    from brandtune.registry import RegisteredVersion
    from brandtune.training import TrainResult

GPU_LIMIT = "brandtune-gpu"
"""Global concurrency limit held by every training task (slots: env ``BRANDTUNE_GPU_SLOTS``, default 1)."""
ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def retry_worthy(exc: BaseException) -> bool:
    """Whether a task that failed with ``exc`` may succeed when run again: an unreachable or overloaded server, or a
    training process killed from outside. A ``ConfigError`` or a run folder held by another training never is,
    nor a ``BrandtuneError`` whose cause is not transient (a NaN loss, a bad dataset)."""
    from brandtune.registry import is_transient
    from brandtune.training.launch import TrainingKilledError
    from brandtune.training.lock import RunDirLockedError

    if isinstance(exc, ConfigError | RunDirLockedError):
        return False
    return isinstance(exc, TrainingKilledError) or is_transient(exc)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only what :func:`retry_worthy` allows (the reason is logged)."""
    try:
        state.result()
    except Exception as exc:
        again = retry_worthy(exc)
        if not again and task.retries:
            get_run_logger().info(
                "not retrying %s: %s is not a transient failure", task.name, type(exc).__name__
            )
        return again
    return False


MLFLOW_IO: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 8, 30],
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
    "timeout_seconds": TIMEOUTS.mlflow,
}


def photo_sources(brand: str, sources: list[str] | None) -> list[Path]:
    """The photo sources to ingest: ``sources``, or the brand's ``data/brands/<brand>/photos`` folder."""
    from brandtune.config import brand_dir, load_brand

    return [Path(s) for s in sources] if sources else [brand_dir(load_brand(brand).name) / "photos"]


@task(name="ingest-photos", cache_policy=NO_CACHE, log_prints=False, timeout_seconds=TIMEOUTS.ingest)
def ingest_task(
    brand: str, sources: list[str] | None, resolution: int | None, min_images: int | None
) -> tuple[IngestResult, float]:
    """Validate, normalise and caption photos into a (content-addressed) dataset.

    Returns:
        The dataset (read from :func:`photo_sources`) and the seconds the ingest took.
    """
    from brandtune.config import IngestConfig, load_brand
    from brandtune.ingest import ingest

    start = time.perf_counter()
    spec = load_brand(brand)
    paths = photo_sources(brand, sources)
    overrides = {
        k: v for k, v in {"resolution": resolution, "min_images": min_images}.items() if v is not None
    }
    result = ingest(spec, paths, IngestConfig.for_brand(spec, **overrides), progress=False)
    get_run_logger().info(
        "dataset %s/%s: %d images, %d rejected%s",
        result.brand,
        result.fingerprint,
        result.num_images,
        result.num_rejected,
        " (reused)" if result.reused else "",
    )
    return result, time.perf_counter() - start


def accelerate_config_path(name: str) -> Path | None:
    """``configs/accelerate/<name>.yaml`` (None for ``'none'``)."""
    if name == "none":
        return None
    path = ACCELERATE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"accelerate_config {name!r}: {path} does not exist; choose one of "
            f"{sorted(p.stem for p in ACCELERATE_DIR.glob('*.yaml')) or 'none (no configs shipped)'} or 'none'."
        )
    return path


def gpu_slots() -> int:
    """``BRANDTUNE_GPU_SLOTS``: trainings that may run at once on this Prefect server (0: no limit).

    Raises:
        ConfigError: it is not a whole number.
    """
    raw = os.environ.get("BRANDTUNE_GPU_SLOTS", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"BRANDTUNE_GPU_SLOTS={raw!r} is not a whole number; set it to the number of GPUs trainings may use "
            "at once (0: no limit)"
        ) from None


def ensure_gpu_limit(logger: Any) -> int:
    """Create the ``brandtune-gpu`` global concurrency limit if missing, or bring an existing one to
    ``BRANDTUNE_GPU_SLOTS`` (logging old -> new); return its slots (0: disabled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    slots = gpu_slots()
    if slots <= 0:
        return 0
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:  # first training on this server
            # another training may create it at the same moment
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots)
                )
            return slots
        if limit.limit != slots:
            client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
            logger.info("%s: slots %d -> %d (BRANDTUNE_GPU_SLOTS)", GPU_LIMIT, limit.limit, slots)
    return slots


def _holders(own_task_run: str | None) -> str:
    """The running training task runs (other than this one), as the GPU-slot message names them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    running = TaskRunFilter(
        name=TaskRunFilterName(like_="train-lora"),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])),
    )
    with get_client(sync_client=True) as client:
        runs = [
            r for r in client.read_task_runs(task_run_filter=running, limit=20) if str(r.id) != own_task_run
        ]
    if not runs:
        return "no training task run (something outside a train-lora task holds it)"
    return "held by " + ", ".join(f"task run {r.name} of flow run {r.flow_run_id}" for r in runs)


def gpu_wait_error(slots: int, waited: float) -> TrainingError:
    """The one line of a training that gave up waiting for a ``brandtune-gpu`` slot."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import task_run

    with get_client(sync_client=True) as client:
        active = client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots
    return TrainingError(
        f"no free slot of the Prefect concurrency limit {GPU_LIMIT} after waiting {waited:.0f} s "
        f"(BRANDTUNE_GPU_WAIT_S): {active} of {slots} slot(s) in use, {_holders(task_run.get_id())}. Wait for "
        f"that training to end, or raise BRANDTUNE_GPU_SLOTS (now {slots}) where more GPUs are free"
    )


@contextlib.contextmanager
def gpu_slot(slots: int, timeouts: Timeouts) -> Iterator[None]:
    """Hold one ``brandtune-gpu`` slot for the block (nothing when ``slots`` is 0), waiting at most
    ``timeouts.gpu_wait`` seconds for it.

    Raises:
        TrainingError: no slot came free in time (see :func:`gpu_wait_error`).
    """
    from prefect.concurrency.sync import concurrency

    with contextlib.ExitStack() as stack:
        gave_up = False
        if slots:
            try:
                stack.enter_context(
                    concurrency(GPU_LIMIT, occupy=1, strict=True, timeout_seconds=timeouts.gpu_wait)
                )
            except TimeoutError:  # only the wait: a time-out of the training itself is not caught here
                gave_up = True
        if gave_up:  # raised outside the handler: Prefect's "timed out" must not make it look transient
            raise gpu_wait_error(slots, timeouts.gpu_wait)
        yield


def invocation_id() -> str | None:
    """This flow run as a training invocation (``None`` outside a flow run): the same on every retry."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return f"prefect-flow-run-{run_id}" if run_id else None


@task(name="check-unchanged", **MLFLOW_IO)
def check_unchanged_task(config: TrainConfig) -> dict[str, Any]:
    """Resolve the training's identity (no weights) and find a registered version that already has it.

    Returns:
        ``config_hash``, and ``unchanged``: None, or the version's ``name``, ``version``, ``run_id``,
        ``aliases``, the current ``champion`` (a version number or None) and the one-line ``message``.
    """
    from prefect.runtime import flow_run

    from brandtune.registry import CHAMPION, list_versions
    from brandtune.settings import Settings
    from brandtune.training.plan import resolve_job
    from brandtune.training.unchanged import find_unchanged

    settings = Settings.from_env()
    job = resolve_job(config, settings)
    found = find_unchanged(job, settings, flow_run_id=flow_run.get_id())
    if found is None:
        return {"config_hash": job.run_hash, "unchanged": None}
    v = found.version
    champion = next(
        (r.version for r in list_versions(job.brand.name, settings=settings) if CHAMPION in r.aliases), None
    )
    return {
        "config_hash": job.run_hash,
        "unchanged": {
            "name": v.name,
            "version": v.version,
            "run_id": v.run_id,
            "aliases": list(v.aliases),
            "champion": champion,
            "message": found.message("force=true"),
        },
    }


@task(
    name="train-lora",
    cache_policy=NO_CACHE,
    log_prints=False,
    timeout_seconds=TIMEOUTS.gpu_wait + TIMEOUTS.train,
    retry_condition_fn=_transient,
)
def train_task(
    config: TrainConfig, num_processes: int = 1, accelerate_config: str = "none"
) -> tuple[TrainResult, float]:
    """Train the LoRA adapter in a child process (own process group) and stream its log here.

    The flow run is the training's invocation: a retry (of this task or of the flow run) continues from its own
    last checkpoint in the same MLflow run, and one whose training had finished gets that result back.

    Args:
        config: A :class:`~brandtune.training.TrainConfig`.
        num_processes: Processes for ``accelerate launch``.
        accelerate_config: Name of a file in ``configs/accelerate/`` or ``'none'``.

    Returns:
        The training's result and the seconds it took (waiting for a GPU slot not counted).
    """
    from prefect.runtime import flow_run, task_run

    from brandtune.provenance import FLOW_RUN_ENV
    from brandtune.training.launch import ProgressLines, launch

    logger = get_run_logger()
    acc = accelerate_config_path(accelerate_config)
    if (invocation := invocation_id()) is not None:
        config = config.model_copy(update={"invocation_id": invocation})
    attempt = max(int(task_run.run_count or 1), int(flow_run.run_count or 1))
    if attempt > 1:
        logger.info(
            "attempt %d of this training (invocation %s): continuing its own checkpoint", attempt, invocation
        )
    env = {FLOW_RUN_ENV: str(flow_run.get_id() or "")}
    slots = ensure_gpu_limit(logger)
    timeouts = Timeouts.from_env()
    if slots:
        logger.info(
            "waiting for a GPU slot (global concurrency limit %s, at most %.0f s)",
            GPU_LIMIT,
            timeouts.gpu_wait,
        )
    with gpu_slot(slots, timeouts):
        start = time.perf_counter()
        result = launch(
            config,
            num_processes=num_processes,
            accelerate_config=acc,
            on_line=ProgressLines(get_run_logger().info),
            env=env,
        )
    seconds = time.perf_counter() - start
    logger.info("adapter %s, MLflow run %s", result.adapter_dir, result.mlflow_run_id)
    return result, seconds


@task(name="register-candidate", **MLFLOW_IO)
def register_task(brand: str, run_id: str) -> tuple[RegisteredVersion, float]:
    """Register the training run's adapter as a new version of ``{brand}-lora`` with alias ``@candidate``."""
    from prefect.runtime import flow_run

    from brandtune.registry import register

    start = time.perf_counter()
    version = register(brand, run_id, flow_run_id=flow_run.get_id())
    get_run_logger().info("registered %s version %s (@candidate)", version.name, version.version)
    return version, time.perf_counter() - start


@task(name="record-lineage", **MLFLOW_IO)
def lineage_task(run_id: str | None, model: str | None = None, version: str | None = None) -> str | None:
    """Tag the MLflow run and model version with this flow run's id and URL; return the run's experiment id."""
    from brandtune.registry import tag_lineage
    from flows._artifacts import flow_run_ref

    flow_run_id, url = flow_run_ref()
    tags = {"prefect.flow_run_id": flow_run_id or "", **({"prefect.flow_run_url": url} if url else {})}
    return tag_lineage(tags, run_id=run_id, name=model, version=version)


@task(name="evaluate-candidate", cache_policy=NO_CACHE, log_prints=False, timeout_seconds=TIMEOUTS.evaluate)
def evaluate_task(config: EvalConfig) -> tuple[EvalOutcome, float]:
    """Render the fixed prompt suite for candidate, champion and base; score it; apply the promotion gate."""
    from brandtune.evaluation.job import evaluate

    start = time.perf_counter()
    outcome = evaluate(config)
    get_run_logger().info(
        "gate %s (candidate v%s vs champion %s): %s",
        "PASSED" if outcome.gate.passed else "FAILED",
        outcome.candidate_version,
        outcome.champion_version or "none",
        outcome.gate.summary(),
    )
    return outcome, time.perf_counter() - start


@task(name="generate-campaign", cache_policy=NO_CACHE, log_prints=False, timeout_seconds=TIMEOUTS.generate)
def generate_task(config: GenerateConfig) -> tuple[GenerationResult, float]:
    """Generate prompt x settings x variations from the chosen adapter, with manifest and contact sheets."""
    from brandtune.generation import generate

    start = time.perf_counter()
    result = generate(config, progress=False)
    get_run_logger().info("%d images (%d reused) in %s", result.generated, result.skipped, result.output_dir)
    return result, time.perf_counter() - start
