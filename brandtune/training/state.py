"""The typed state a training passes around: the models it trains and what steps them.

Family-neutral on purpose: the denoiser is whatever carries the LoRA (a UNet for SD 1.x/2.x and SDXL, a transformer
for the flow-matching families) and the text encoders are a tuple in the family's order (one, two or three).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler

    from brandtune.runlog import RunLog
    from brandtune.training.ema import AdapterEMA


@dataclass
class Models:
    """The modules a training step runs.

    Attributes:
        trained: The modules that carry trainable LoRA layers, as ``accelerator.prepare`` returned them (possibly
            wrapped for DDP): the denoiser first, then the trained text encoders.
        text_encoders: The text encoders the loop runs on each batch's token ids, as loaded (not wrapped), in the
            family's order; empty when the prompt embeddings are cached, i.e. the text encoders are not trained.
    """

    trained: tuple[torch.nn.Module, ...]
    text_encoders: tuple[torch.nn.Module, ...] = ()

    @property
    def denoiser(self) -> torch.nn.Module:
        """The (prepared) model that predicts the noise, velocity or flow: the UNet, or a transformer."""
        return self.trained[0]

    @property
    def trained_text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """The (prepared) text encoders that carry LoRA layers, in the family's order."""
        return self.trained[1:]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter the optimizer updates, in module order."""
        return [p for m in self.trained for p in m.parameters() if p.requires_grad]


@dataclass
class TrainState:
    """What the loop steps: the accelerator with the models it prepared, the optimizer, the LR schedule and the
    tracker (the main process's run log, which the forwarder sends to MLflow; None elsewhere).

    Attributes:
        accelerator: The process's accelerator.
        models: The prepared models.
        optimizer: The optimizer over :meth:`Models.trainable_parameters` (prepared).
        lr_scheduler: The learning-rate schedule, stepped once per optimizer step.
        tracker: The run log this training records to (:mod:`brandtune.runlog`), on the main process only.
        ema: The moving average of the trainable weights when ``ema_decay`` is set (every process), else None.
    """

    accelerator: Accelerator
    models: Models
    optimizer: torch.optim.Optimizer
    lr_scheduler: LRScheduler
    tracker: RunLog | None = None
    ema: AdapterEMA | None = None
