"""LoRA fine-tuning of a base diffusion model on a brand dataset, under accelerate.

- :func:`train`: train in this process (once per process under ``accelerate launch``);
- :func:`launch`: train in a child process (``python -m brandtune.training`` or ``accelerate launch``), the way the
  CLI and the flows do; it returns the child's :class:`TrainResult`, validated;
- :class:`TrainConfig`: what to train; :class:`TrainResult`: what a training produced.

Importing this package is cheap: torch, diffusers, peft and accelerate are imported by the functions that need them.
Entry point: ``python -m brandtune.training --config FILE`` (also under ``accelerate launch``).
"""

from brandtune.config import TrainConfig
from brandtune.training.launch import launch  # the function: it shadows the module's name on this package
from brandtune.training.result import TrainResult
from brandtune.training.run import train

__all__ = ["TrainConfig", "TrainResult", "launch", "train"]
