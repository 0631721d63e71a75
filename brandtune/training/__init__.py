"""LoRA fine-tuning of a base diffusion model on a brand dataset, under accelerate.

Importing this package is cheap: torch, diffusers and peft are imported by the functions that need them.
Entry point: ``python -m brandtune.training --config FILE`` (also under ``accelerate launch``).
"""

from brandtune.training.config import TrainConfig

__all__ = ["TrainConfig"]
