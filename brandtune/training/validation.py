"""Validation images during and after training: fixed prompts and seeds, logged to MLflow and the run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from brandtune.training.plan import TrainPlan
    from brandtune.training.state import TrainState

from brandtune.models.family import FAMILY_INFO

logger = logging.getLogger(__name__)


def pipeline_with(
    plan: TrainPlan, denoiser: torch.nn.Module, text_encoders: list[torch.nn.Module] | None = None
) -> DiffusionPipeline:
    """The base pipeline, with the (LoRA-carrying) training denoiser and text encoders swapped in.

    The frozen VAE, text encoders and tokenizers that training kept in memory (``plan.validation_parts``) are
    used as they are; only what it let go (the flow families' text encoders) and the sampling scheduler are loaded
    from the base folder. Everything gets the denoiser's device; what is loaded here, the training weight dtype,
    as the training scripts' validation does.
    """
    import diffusers

    from brandtune import _quiet
    from brandtune.models.loading import pipeline_extras

    info = FAMILY_INFO[plan.resolved.family]
    cls = getattr(diffusers, info.pipeline_class)
    kwargs: dict[str, Any] = {**plan.validation_parts, info.denoiser: denoiser, "use_safetensors": True}
    kwargs.update(pipeline_extras(info.name))
    for spec, enc in zip(info.text_encoders, text_encoders or [], strict=False):
        kwargs[spec.folder] = enc
    with _quiet.loading_bars_off():
        pipe = cls.from_pretrained(plan.resolved.path, dtype=plan.weight_dtype, **kwargs).to(denoiser.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validation_sizes(plan: TrainPlan) -> list[tuple[int, int]]:
    """``(width, height)`` per brand aspect at the training resolution, on the family's size grid
    (:func:`~brandtune.config.brand.aspect_size`); ``1:1`` (every brand without ``aspects``) is the resolution."""
    from brandtune.config.aspects import aspect_size

    multiple = plan.ops.resolution_multiple(plan.resolved.path)
    return [aspect_size(a, plan.resolution, multiple) for a in plan.brand.aspects]


#: Images per pipeline call when validating: the prompts of one aspect go through the sampler together (the tiny
#: models' 20-step validation then costs a few denoiser calls instead of one per prompt); bounded so that a large
#: model at 1024 px does not need the memory of every prompt at once.
VALIDATION_BATCH = 8


def sample(
    plan: TrainPlan, pipe: DiffusionPipeline, prompts: list[str], per_prompt: int, steps: int
) -> list[Image.Image]:
    """``per_prompt`` images of every prompt in every brand aspect (:func:`validation_sizes`): a prompt's images,
    aspect by aspect; prompt ``i`` image ``j`` is seeded ``1000 i + j`` in each aspect (its own generator, so an
    image does not depend on which others share its batch of :data:`VALIDATION_BATCH`)."""
    import torch

    from brandtune.sampling import call_kwargs

    extra = call_kwargs(pipe)
    if "max_sequence_length" in extra and plan.config.max_sequence_length is not None:
        extra["max_sequence_length"] = plan.config.max_sequence_length  # as trained
    jobs = [(i, j) for i in range(len(prompts)) for j in range(per_prompt)]
    made: dict[tuple[int, int, int], Image.Image] = {}
    sizes = validation_sizes(plan)
    for a, (width, height) in enumerate(sizes):
        for first in range(0, len(jobs), VALIDATION_BATCH):
            chunk = jobs[first : first + VALIDATION_BATCH]
            out = pipe(
                [prompts[i] for i, _ in chunk],
                num_inference_steps=steps,
                generator=[torch.Generator().manual_seed(1000 * i + j) for i, j in chunk],
                height=height,
                width=width,
                **extra,
            )
            made.update({(i, a, j): image for (i, j), image in zip(chunk, out.images, strict=True)})
    return [made[i, a, j] for i in range(len(prompts)) for a in range(len(sizes)) for j in range(per_prompt)]


def log_validation(plan: TrainPlan, state: TrainState, step: int) -> Path:
    """Sample the validation prompts, save a grid under ``<run>/validation/`` and log it to MLflow.

    Under FSDP every process samples (the sharded denoiser's forward is a collective) and the main process saves.
    """
    import torch

    from brandtune.images import image_grid

    cfg, accelerator = plan.config, state.accelerator
    denoiser = accelerator.unwrap_model(state.models.denoiser)
    encoders = (
        [accelerator.unwrap_model(m) for m in state.models.text_encoders] if cfg.train_text_encoder else None
    )
    was_training = denoiser.training
    denoiser.eval()
    # autocast as in training: the LoRA weights stay fp32 and some pipelines hand fp32 latents to a bf16 VAE
    with torch.no_grad(), accelerator.autocast():
        pipe = pipeline_with(plan, denoiser, encoders)
        images = sample(
            plan, pipe, plan.validation_prompts, cfg.num_validation_images, cfg.validation_inference_steps
        )
    if was_training:
        denoiser.train()
    out = plan.run_dir / "validation" / f"step-{step:06d}.png"
    if not accelerator.is_main_process:
        return out
    # a row per prompt, its aspects side by side
    columns = cfg.num_validation_images * len(plan.brand.aspects)
    grid = image_grid(images, columns=columns, thumb=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    if state.tracker is not None:
        state.tracker.log_image(grid, key="validation", step=step)
    logger.info("validation images at step %d: %s", step, out)
    return out
