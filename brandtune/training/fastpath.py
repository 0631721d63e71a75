"""The training step's fast paths: a LoRA linear layer with less work per call (:func:`step_lora_linear`), the LoRA
layers switched off without a walk over the model, and CPU bf16 autocast where the CPU does bf16 natively
(:func:`~brandtune.training.plan.cpu_bf16_native`)."""

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
_STEP_LORA_LINEAR: list[type] = []  # the class, made on first use (peft is imported only then)


def step_lora_linear() -> type:
    """peft's LoRA ``Linear`` with a leaner forward for training: the one-adapter case computes exactly what peft's
    does (``base(x) + B(A(dropout(x))) * scaling``, the input cast to the LoRA weights' dtype, the result cast
    back), bit for bit, without peft's per-call argument checks, adapter-dict walks and variant hooks, and without
    the multiplication by a scaling of 1 (alpha = rank, the default). Anything else (adapters switched off, merged,
    several adapters, DoRA and other variants, extra arguments) goes to peft's own forward.

    Registered through peft's custom-module mapping (:func:`~brandtune.training.lora.add_lora`), so the layer is
    a peft LoRA layer to everything else: saving, ``adapters_off``, merging. On builtin:tiny's 56 attention
    projections it is about 9% of a CPU training step (docs/benchmarks.md); on a GPU, fewer host calls per layer.
    """
    if _STEP_LORA_LINEAR:
        return _STEP_LORA_LINEAR[0]
    import torch
    from peft.tuners.lora.layer import Linear

    class StepLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            active = self.active_adapters
            if args or kwargs or self.disable_adapters or self.merged or len(active) != 1:
                return super().forward(x, *args, **kwargs)
            name = active[0]
            if name not in self.lora_A or name in self.lora_variant:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x)
            lora_A, dropout = self.lora_A[name], self.lora_dropout[name]
            h = self._cast_input_dtype(x, lora_A.weight.dtype)
            lora = self.lora_B[name](lora_A(h if type(dropout) is torch.nn.Identity else dropout(h)))
            scaling = self.scaling[name]
            out = result + (lora if scaling == 1 else lora * scaling)
            return out if out.dtype == result.dtype else out.to(result.dtype)

    _STEP_LORA_LINEAR.append(StepLoraLinear)
    return StepLoraLinear


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
