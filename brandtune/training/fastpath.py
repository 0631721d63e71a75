"""The training step's fast paths: the LoRA layers switched off without a walk over the model, and CPU bf16
autocast where the CPU does bf16 natively (:func:`~brandtune.training.plan.cpu_bf16_native`)."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from brandtune.training.plan import TrainPlan

logger = logging.getLogger(__name__)

_TUNER_LAYERS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """``model`` with its LoRA layers switched off inside the block: what diffusers' ``disable_adapters`` /
    ``enable_adapters`` do (each peft layer's ``enable_adapters``), on a list of the layers found once per model
    instead of a walk over every module, and a package-version check, each step (12 ms a step on builtin:tiny)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = _TUNER_LAYERS.get(model)
    if layers is None:
        layers = _TUNER_LAYERS[model] = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def cpu_bf16_step(plan: TrainPlan, accelerator: Accelerator) -> bool:
    """Whether the step runs under CPU bf16 autocast: ``cpu_bf16`` on, full precision asked for, training on a
    CPU that does bf16 natively (:func:`~brandtune.training.plan.cpu_bf16_native`). Says so in the log."""
    from brandtune.training.plan import cpu_bf16_native

    cfg = plan.config
    if not (cfg.cpu_bf16 and cfg.mixed_precision == "no" and accelerator.device.type == "cpu"):
        return False
    if not cpu_bf16_native():
        return False
    if accelerator.is_main_process:
        logger.info(
            "CPU supports bf16 (AMX): training the %s under bf16 autocast (cpu_bf16: false turns it off)",
            "UNet" if plan.components is None or plan.components.info.denoiser == "unet" else "transformer",
        )
    return True


def step_autocast(plan: TrainPlan, accelerator: Accelerator) -> contextlib.AbstractContextManager[Any]:
    """The autocast of a training step: CPU bf16 (:func:`cpu_bf16_step`), else the accelerator's (mixed
    precision, or none)."""
    if getattr(plan, "step_bf16", False):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return accelerator.autocast()
