"""``train()``: resolve, check, encode once, train, save the adapter, record everything in MLflow."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.config import TrainConfig
from brandtune.errors import TrainingError
from brandtune.procs import default_threads
from brandtune.settings import Settings
from brandtune.tracking import finish_quietly
from brandtune.training import ema
from brandtune.training.data import (
    cache_key,
    encode_empty_caption,
    load_or_encode,
    masks_key,
    read_dataset,
)
from brandtune.training.families import check_cuda_graphs
from brandtune.training.fsdp import is_sharded, trainable_weights
from brandtune.training.loop import restore_checkpoint, run_loop
from brandtune.training.plan import TrainJob, TrainPlan, check_disk, check_precision, resolve_job
from brandtune.training.result import TrainResult
from brandtune.training.rundir import CHOICE_ENV, RunChoice, new_invocation_id
from brandtune.training.state import Models, TrainState

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from accelerate import Accelerator

    from brandtune.forwarder import Forwarder
    from brandtune.runlog import RunLog
    from brandtune.sidecar import Sidecar
    from brandtune.training.lock import RunLock

    Forwarding = Forwarder | Sidecar | None

logger = logging.getLogger(__name__)


def _optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise TrainingError("optimizer 'adamw8bit' needs bitsandbytes: pip install bitsandbytes") from exc
        cls: type[torch.optim.Optimizer] = bnb.optim.AdamW8bit
    elif config.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as exc:
            raise TrainingError("optimizer 'prodigy' needs prodigyopt: pip install prodigyopt") from exc
        return Prodigy(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        cls = torch.optim.AdamW
    kwargs: dict[str, Any] = {}
    if cls is torch.optim.AdamW:
        kwargs["fused"] = True  # one kernel per step for all LoRA tensors (CUDA and CPU), not one op each
    return cls(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
        eps=config.adam_epsilon,
        **kwargs,
    )


def _class_images(plan: TrainPlan, settings: Settings, device: torch.device) -> None:
    """Generate (once, cached) and encode the class images for prior preservation."""
    import torch

    from brandtune.fsutil import publish_dir, staging_dir
    from brandtune.models import load_base_pipeline
    from brandtune.training.data import Example

    cfg = plan.config
    prompt = cfg.class_prompt or f"a photo of a {plan.brand.subject}"
    key = cache_key(base=plan.resolved.revision, prompt=prompt, n=cfg.num_class_images, res=plan.resolution)
    folder = settings.cache_dir / "class_images" / key
    if not folder.is_dir():
        pipe = load_base_pipeline(plan.resolved, device=str(device))
        with staging_dir(folder) as tmp:
            for i in range(cfg.num_class_images):
                gen = torch.Generator().manual_seed(i)
                image = pipe(prompt, generator=gen, height=plan.resolution, width=plan.resolution).images[0]
                image.save(tmp / f"{i:05d}.png")
            publish_dir(tmp, folder)
    examples = [Example(p, prompt, plan.resolution, plan.resolution) for p in sorted(folder.glob("*.png"))]
    encoded, _ = load_or_encode(
        plan.components,
        examples,
        plan.resolution,
        folder / f"encoded-{cache_key(family=plan.family, text=plan.ops.text_key(plan.config))}.safetensors",
        plan.config,
        flip=False,
        with_text=True,
        device=device,
    )
    plan.class_encoded = encoded


def _encode(plan: TrainPlan, settings: Settings, accelerator: Accelerator) -> bool:
    """Encode the dataset (and the class images) once, or take it from the latent cache; returns whether the
    cache was hit."""
    from brandtune.training.buckets import assign_buckets

    cfg = plan.config
    max_aspect = cfg.bucket_max_aspect if cfg.aspect_buckets else None
    multiple = plan.ops.resolution_multiple(plan.resolved.path)
    sizes = assign_buckets([ex.file for ex in plan.examples], plan.resolution, multiple, max_aspect)
    square = all(size == (plan.resolution, plan.resolution) for size in sizes)
    shapes = set(sizes) | ({(plan.resolution, plan.resolution)} if cfg.prior_preservation else set())
    check_cuda_graphs(cfg.compile, accelerator.device, len(shapes))  # before anything is encoded
    key = cache_key(
        dataset=plan.fingerprint,
        base=plan.resolved.revision,
        resolution=plan.resolution,
        flip=cfg.random_flip,
        family=plan.family,
        text=not cfg.train_text_encoder,
        conditioning=plan.ops.text_key(cfg),
        # the mask files' bytes when the loss uses masks (absent otherwise: a dataset without masks keeps its key)
        **({"masks": masks} if cfg.masked_loss and (masks := masks_key(plan.examples)) else {}),
        **({} if square else {"buckets": sizes}),  # (a square dataset keeps its key)
    )
    cache_file = settings.cache_dir / "latents" / f"{key}.safetensors" if cfg.cache_latents else None
    with accelerator.main_process_first():
        plan.encoded, hit = load_or_encode(
            plan.components,
            plan.examples,
            plan.resolution,
            cache_file,
            cfg,
            flip=cfg.random_flip,
            with_text=not cfg.train_text_encoder,
            device=accelerator.device,
            sizes=sizes,
        )
        if cfg.prior_preservation:
            _class_images(plan, settings, accelerator.device)
    if cfg.caption_dropout:  # now, while the text encoders are loaded (the flow families free them next)
        plan.empty_conditioning = encode_empty_caption(
            plan.components, cfg, with_text=not cfg.train_text_encoder
        )
    return hit


def _setup_models(plan: TrainPlan, accelerator: Accelerator) -> Models:
    """Load the base, attach the LoRA layers and move everything to the device (not yet prepared)."""
    import torch
    from diffusers.training_utils import cast_training_params

    from brandtune.models import load_components
    from brandtune.training.lora import add_lora

    cfg = plan.config
    check_cuda_graphs(cfg.compile, accelerator.device)  # before anything loads
    plan.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        cfg.mixed_precision, torch.float32
    )
    components = load_components(plan.resolved)
    plan.components = components
    denoiser = components.denoiser
    add_lora(denoiser, cfg.rank, cfg.lora_alpha, cfg.dropout, cfg.target_modules, components.info.denoiser)
    trained = [denoiser]
    encoders = list(components.text_encoders)
    for enc in encoders:
        enc.requires_grad_(False)
        if cfg.train_text_encoder:
            add_lora(
                enc, cfg.rank, cfg.lora_alpha, cfg.dropout, cfg.text_encoder_target_modules, "text encoder"
            )
            trained.append(enc)
    for model in [denoiser, *encoders]:
        model.to(accelerator.device, dtype=plan.weight_dtype)
    cast_training_params(trained, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    plan.ops.prepare(components, cfg)
    return Models(trained=tuple(trained), text_encoders=tuple(encoders))


def _start_tracking(plan: TrainPlan, run_id: str, resume_from: Path | None) -> RunLog:
    """Record the resolved config, tags and dataset of MLflow run ``run_id`` in the training's run log."""
    from brandtune.provenance import brandtune_version, flow_run_id, git_sha
    from brandtune.runlog import RunLog
    from brandtune.tracking import flat_params
    from brandtune.training.rundir import write_run_file

    plan.mlflow_run_id = run_id
    write_run_file(plan.run_dir, mlflow_run_id=run_id)
    tracker = RunLog(plan.run_dir, run_id)
    resolved_config = {
        **plan.config.model_dump(mode="json"),
        "dataset": plan.fingerprint,
        "base_model": plan.resolved.name,
        "base_revision": plan.resolved.revision,
        "resolution": plan.resolution,
        "config_hash": plan.run_hash,
        "training_defaults_source": plan.resolved.training_defaults.source,
    }
    tracker.log_params(flat_params(resolved_config))
    tracker.log_dict(resolved_config, "config/train_config.json")
    tags = {
        "brandtune.stage": "train",
        "brandtune.brand": plan.brand.name,
        "brandtune.base_model": plan.resolved.name,
        "brandtune.base_revision": plan.resolved.revision,
        "brandtune.dataset_fingerprint": plan.fingerprint,
        "brandtune.config_hash": plan.run_hash,
        "brandtune.git_sha": git_sha(),
        "brandtune.version": brandtune_version(),
        "brandtune.run_dir": str(plan.run_dir),
        "brandtune.invocation_id": plan.config.invocation_id or "",
    }
    if flow_run := flow_run_id():
        tags["prefect.flow_run_id"] = flow_run
    tracker.set_tags(tags)
    if resume_from is None:
        tracker.log_dataset(plan.dataset_dir, f"{plan.brand.name}-{plan.fingerprint}", plan.fingerprint)
    return tracker


def _forwarding(
    plan: TrainPlan, settings: Settings, resume_from: Path | None
) -> tuple[Callable[[], str], Forwarding]:
    """The MLflow run id (a call that waits for it) and who forwards the run log (``BRANDTUNE_FORWARDER``),
    started before the models load, so that the run is open when the loop starts: the launching process, which
    opens the run while this process starts (``launcher``); a sidecar process started here, which opens it
    (``sidecar``: ``python -m brandtune.training`` and plain ``accelerate launch``); else a thread of this
    process (a library call of :func:`train`). This process never imports mlflow but in the last case.

    Raises:
        TrainingError: the run cannot be created (the tracking server is down): before any step is trained.
    """
    from brandtune.forwarder import MODE_ENV, Forwarder, launcher_run_id, open_training_run, wait_limit
    from brandtune.sidecar import start_sidecar
    from brandtune.training.rundir import read_run_file

    resume_run_id = None
    if resume_from is not None:
        resume_run_id = json.loads((resume_from / "state.json").read_text()).get("mlflow_run_id")
    abandoned = read_run_file(plan.run_dir).get("mlflow_run_id")
    mode, name = os.environ.get(MODE_ENV, ""), f"train-{plan.run_hash[:8]}"
    if (
        mode == "launcher"
    ):  # the launcher opens the run while this process starts; the id is needed only later
        return lambda: launcher_run_id(plan.run_dir, wait_limit()), None
    if mode == "sidecar":
        sidecar = start_sidecar(plan.run_dir, plan.brand.name, name, resume_run_id, abandoned)
        return lambda: sidecar.run_id(wait_limit()), sidecar
    run_id = open_training_run(
        plan.run_dir, plan.brand.name, name, resume_run_id, settings.tracking_uri, abandoned
    )
    return lambda: run_id, Forwarder(plan.run_dir, settings.tracking_uri).start()


def _fail_before_loop(plan: TrainPlan, run_id: Callable[[], str], forwarding: Forwarder | Sidecar) -> None:
    """End the MLflow run FAILED when the set-up fails (the error in flight is the one the user sees)."""
    from brandtune.runlog import RunLog

    try:
        finish_quietly(RunLog(plan.run_dir, run_id(), system_metrics=False), "FAILED")
    except Exception as exc:  # no run id (the server was down): nothing to end
        logger.info("no MLflow run to end: %s", exc)
    forwarding.finish()


def _choose(job: TrainJob, settings: Settings, accelerator: Accelerator) -> RunChoice:
    """The run folder and checkpoint: the launcher's choice when it holds the lock for this process, else the
    main process's (shared with the other processes)."""
    from brandtune.training.lock import held_for_me
    from brandtune.training.rundir import choose_run_dir

    if (given := os.environ.get(CHOICE_ENV)) and held_for_me(RunChoice.from_json(given).run_dir):
        return RunChoice.from_json(given)
    if accelerator.num_processes == 1:
        return choose_run_dir(job, settings)
    from accelerate.utils import broadcast_object_list

    box = [choose_run_dir(job, settings) if accelerator.is_main_process else None]
    broadcast_object_list(box)
    return box[0]


def train(config: TrainConfig, settings: Settings | None = None) -> TrainResult:
    """Train a LoRA adapter as ``config`` says; run once per process under ``accelerate launch``.

    Base-dependent fields left empty take the base's recommendation. The run folder is a new one per invocation
    unless this is a retry of the same invocation or ``resume`` asks to continue (:mod:`brandtune.training.rundir`);
    it is locked for the training's duration (:mod:`brandtune.training.lock`).

    Returns:
        Where the adapter is, the MLflow run, steps and final loss.

    Raises:
        TrainingError: bad input (named before any compute), a run folder in use, or a failure during training.
    """
    from accelerate import Accelerator

    from brandtune.training.checkpoint import check_world
    from brandtune.training.lock import held_for_me
    from brandtune.training.rundir import claim, read_result

    settings = settings or Settings.from_env()
    if config.invocation_id is None:  # a direct call: an invocation of its own, which nothing else continues
        config = config.model_copy(update={"invocation_id": new_invocation_id()})
    job = resolve_job(config, settings)
    check_precision(job.config.mixed_precision)
    examples = read_dataset(job.dataset_dir)
    accelerator = Accelerator(
        mixed_precision=job.config.mixed_precision,
        gradient_accumulation_steps=job.config.gradient_accumulation_steps,
    )
    # an explicit output_dir is locked before its contents are read, so a second training is refused at once
    lock = _lock(job.config.output_dir, job, accelerator)
    try:
        choice = _choose(job, settings, accelerator)
        if choice.finished:
            logger.info("%s", choice.describe())
            return read_result(choice.run_dir)
        if choice.resume_from is not None:
            check_world(choice.resume_from, accelerator.num_processes)
        if accelerator.is_main_process and not held_for_me(choice.run_dir):
            lock = lock or _lock(choice.run_dir, job, accelerator)
            claim(choice, job)
        if accelerator.is_main_process:
            logger.info("%s", choice.describe())
        plan = TrainPlan.from_job(job, examples, choice.run_dir)
        return _train(plan, settings, accelerator, choice.resume_from)
    finally:
        if lock is not None:
            lock.release()


def _lock(run_dir: Path | None, job: TrainJob, accelerator: Accelerator) -> RunLock | None:
    """Take ``run_dir``'s lock on the main process, unless the launcher holds it for this process (or no folder
    is known yet)."""
    from brandtune.training.lock import acquire, held_for_me

    if run_dir is None or not accelerator.is_main_process or held_for_me(Path(run_dir)):
        return None
    return acquire(Path(run_dir), job.config.invocation_id)


def _train(
    plan: TrainPlan, settings: Settings, accelerator: Accelerator, resume_from: Path | None
) -> TrainResult:
    """Set up, continue ``resume_from`` if given, run the loop, save the adapter and write ``result.json``."""
    from brandtune.training.rundir import write_result

    config = plan.config
    forwarding: Forwarding = None
    if accelerator.is_main_process:
        run_id, forwarding = _forwarding(plan, settings, resume_from)
    try:
        state, cache_hit = _prepare(plan, settings, accelerator)
        if accelerator.is_main_process:
            state.tracker = _start_tracking(plan, run_id(), resume_from)
    except BaseException:
        if forwarding is not None:  # the run is open: it ends FAILED, as when the loop fails
            _fail_before_loop(plan, run_id, forwarding)
        raise
    start = 0
    try:
        if resume_from is not None:
            start = restore_checkpoint(plan, state, resume_from)
            logger.info("resumed from %s at step %d", resume_from, start)
        loss = run_loop(plan, state, start, resume_from)
        adapter_dir = plan.run_dir / "adapter"
        # FSDP: every process takes part in gathering the adapter and in validating
        if accelerator.is_main_process or is_sharded(accelerator):
            _finish(plan, state, adapter_dir)
        accelerator.wait_for_everyone()
    except BaseException:
        if state.tracker is not None:
            finish_quietly(state.tracker, "FAILED")  # the training's error is the one raised
        if forwarding is not None:
            forwarding.finish()
        raise
    if state.tracker is not None:
        state.tracker.finish("FINISHED")
    if forwarding is not None:
        forwarding.finish()  # bounded: what MLflow cannot take now stays in the run log, with a message
    result = TrainResult(
        run_dir=plan.run_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=plan.mlflow_run_id,
        steps=config.max_train_steps,
        final_loss=loss,
        cache_hit=cache_hit,
        resumed_from=start,
        config_hash=plan.run_hash,
        invocation_id=config.invocation_id or "",
    )
    if accelerator.is_main_process:
        write_result(plan.run_dir, result)
    accelerator.end_training()
    return result


def _prepare(plan: TrainPlan, settings: Settings, accelerator: Accelerator) -> tuple[TrainState, bool]:
    """Seed, load the models with their LoRA layers, encode the data once, and hand models and optimizer to
    accelerate; returns the training state (no tracker yet) and whether the latent cache was hit."""
    import torch
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import free_memory

    config = plan.config
    plan.rank, plan.world = accelerator.process_index, accelerator.num_processes
    torch.set_num_threads(config.num_threads or default_threads(plan.world))
    if accelerator.device.type == "cpu":
        # tiny weights and gradients can hit denormal floats, which are several times slower on x86
        torch.set_flush_denormal(True)
    set_seed(config.seed)
    models = _setup_models(plan, accelerator)
    params = models.trainable_parameters()
    check_disk(plan.run_dir, sum(p.numel() for p in params), config)
    cache_hit = _encode(plan, settings, accelerator)
    # the loop runs the text encoders only when it trains them; else the prompt embeddings are cached
    encoders = models.text_encoders if config.train_text_encoder else ()
    plan.release_encoders(encoders)  # (the UNet families keep theirs for the validation pipeline)
    if not encoders:  # free the frozen text encoders (FLUX's and SD3's T5 alone is ~9 GB in bf16)
        models = Models(trained=models.trained)
        free_memory()
    optimizer = _optimizer(config, params)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    prepared = accelerator.prepare(*models.trained, optimizer)
    models = Models(trained=tuple(prepared[:-1]), text_encoders=encoders)
    state = TrainState(accelerator, models, prepared[-1], lr_scheduler)
    state.ema = ema.create(config.ema_decay, state)  # of the prepared weights (FSDP: their shards)
    return state, cache_hit


def _finish(plan: TrainPlan, state: TrainState, adapter_dir: Path) -> None:
    """Save the adapter, draw the last validation images and log the adapter to MLflow (main process; under FSDP
    every process runs this, and only the main process writes). With EMA on, the adapter and the images are the
    moving average's weights."""
    from brandtune.training.lora import save_adapter
    from brandtune.training.validation import log_validation

    accelerator = state.accelerator
    denoiser = accelerator.unwrap_model(state.models.denoiser)
    encoders = [accelerator.unwrap_model(m) for m in state.models.trained_text_encoders]
    weights = None  # the modules' own
    if state.ema is not None:
        weights = state.ema.per_module(1 + len(encoders))  # FSDP: gathered by every process
    elif is_sharded(accelerator):
        weights = [trainable_weights(m) for m in [denoiser, *encoders]]
    if accelerator.is_main_process:
        save_adapter(
            adapter_dir, plan.resolved.family, denoiser, encoders, plan.provenance(), plan.config.export_kohya,
            weights,
        )  # fmt: skip
    with ema.ema_weights(state):
        log_validation(plan, state, plan.config.max_train_steps)
    if state.tracker is not None:
        state.tracker.log_artifact(adapter_dir, "adapter")
        state.tracker.set_tags({"brandtune.adapter_dir": str(adapter_dir)})
    if accelerator.is_main_process:
        logger.info("adapter written to %s", adapter_dir)
