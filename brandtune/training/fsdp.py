"""Training under FSDP2: what reads or writes the LoRA weights whole while they are sharded.

Under ``distributed_type: FSDP`` (version 2) every parameter of a prepared model, the LoRA weights included, is a
``DTensor`` holding this process's shard, and so is the optimizer state of each. Gathering one whole is a
collective: every process calls these functions, in the same order, never the main process alone. Outside FSDP
they hand plain tensors back unchanged, so callers need no branch of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the models ``accelerator`` prepared are sharded (FSDP): then every process saves and validates."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def whole(tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` with each ``DTensor`` gathered whole (every process; plain values come back unchanged)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor().detach() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters of ``model`` by name, whole (every process under FSDP)."""
    return whole({n: p for n, p in model.named_parameters() if p.requires_grad})


def whole_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict()`` with its sharded per-parameter tensors gathered (every process)."""
    return {**state, "state": {idx: whole(per_param) for idx, per_param in state["state"].items()}}


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) sharded as ``param`` is: this process's part of it as a ``DTensor`` when ``param`` is
    one, else ``value`` itself. No communication: every process holds ``value`` whole."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value
    return distribute_tensor(
        value.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
    )


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.load_state_dict`` of a whole state: shard each parameter's state tensors as the
    parameter is (a no-op outside FSDP)."""
    for param, per_param in optimizer.state.items():
        for key, value in per_param.items():
            if hasattr(value, "shape") and tuple(value.shape) == tuple(param.shape) and value.dim() > 0:
                per_param[key] = like(value, param)
