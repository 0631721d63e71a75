"""An exponential moving average (EMA) of the adapter weights: what the adapter is when ``ema_decay`` is set.

The average is an fp32 shadow of every trainable (LoRA) tensor, updated after each optimizer step::

    shadow <- d_n * shadow + (1 - d_n) * weight,   d_n = min(ema_decay, (1 + n) / (10 + n))

for the n-th optimizer step (1-based), as diffusers' ``EMAModel`` warms its decay up (without ``use_ema_warmup``):
early steps weigh more, so a short run's average is not held back by the LoRA's initial (zero-effect) weights.
The shadow starts as the initial weights and depends only on the weights and the step, so it needs no RNG and a
resumed run (the shadow restored from the checkpoint) averages exactly what the uninterrupted run does.

Shadow tensors are keyed ``<i>/<parameter name>``, ``i`` the index of the module in ``Models.trained`` (the
checkpoint's ``trainable`` layout). Under DDP every process keeps the same shadow (the weights are synced); under
FSDP each process keeps the shadow of its own shards (a ``DTensor`` like the weight), gathered whole to save
(:mod:`brandtune.training.fsdp`, every process).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from brandtune.training import fsdp

if TYPE_CHECKING:
    import torch

    from brandtune.training.state import TrainState


def decay_at(decay: float, step: int) -> float:
    """The decay of the update after optimizer step ``step`` (1-based)."""
    return min(decay, (1 + step) / (10 + step))


def trained_weights(modules: Sequence[torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters of ``modules`` (unwrapped), keyed ``<i>/<name>`` (as they are: shards under FSDP)."""
    return {f"{i}/{n}": p for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad}


def state_weights(state: TrainState) -> dict[str, torch.nn.Parameter]:
    """:func:`trained_weights` of the training's modules."""
    return trained_weights([state.accelerator.unwrap_model(m) for m in state.models.trained])


class AdapterEMA:
    """The fp32 moving average of a set of weights (see the module docstring).

    Args:
        decay: The decay the warm-up rises to (``TrainConfig.ema_decay``), in (0, 1).
        weights: The weights to average, by key (held: the optimizer updates them in place); the shadow starts
            as a copy of them.
    """

    def __init__(self, decay: float, weights: dict[str, torch.Tensor]) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.decay = decay
        self.weights = weights
        self.shadow = {k: w.detach().clone().float() for k, w in weights.items()}

    def update(self, step: int) -> None:
        """Move the shadow toward the weights after optimizer step ``step`` (1-based)."""
        import torch

        weight = 1.0 - decay_at(self.decay, step)
        with torch.no_grad():
            for key, shadow in self.shadow.items():
                shadow.lerp_(self.weights[key].detach().float(), weight)

    def whole(self) -> dict[str, torch.Tensor]:
        """The shadow, gathered whole under FSDP (every process calls this); plain tensors otherwise."""
        return fsdp.whole(self.shadow)

    def per_module(self, n: int) -> list[dict[str, torch.Tensor]]:
        """The whole shadow as ``n`` dicts by parameter name, one per module (``save_adapter``'s ``weights``)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
        for key, value in self.whole().items():
            idx, name = key.split("/", 1)
            out[int(idx)][name] = value
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the shadow from a checkpoint's whole tensors (every process; sharded again under FSDP)."""
        import torch

        if tensors.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() ^ tensors.keys())[:3]
            raise ValueError(f"EMA tensors do not match the trained weights (e.g. {', '.join(missing)})")
        with torch.no_grad():
            for key, shadow in self.shadow.items():
                shadow.copy_(fsdp.like(tensors[key], shadow))

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the weights hold the average; after it, exactly what they held before."""
        import torch

        with torch.no_grad():
            raw = {k: w.detach().clone() for k, w in self.weights.items()}
            for key, w in self.weights.items():
                w.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, w in self.weights.items():
                    w.copy_(raw[key])


def create(decay: float | None, state: TrainState) -> AdapterEMA | None:
    """The EMA of the training's weights, as they are now (after ``prepare``), or None when ``decay`` is off."""
    return AdapterEMA(decay, state_weights(state)) if decay else None


@contextmanager
def ema_weights(state: TrainState) -> Iterator[None]:
    """Within the block the training's modules hold the EMA weights (no-op when EMA is off)."""
    if state.ema is None:
        yield
        return
    with state.ema.swapped_in():
        yield
