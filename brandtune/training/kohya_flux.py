"""Export of a FLUX.1 transformer LoRA to the kohya/BFL layout that kohya sd-scripts, ai-toolkit and ComfyUI use.

brandtune saves a FLUX adapter in diffusers' layout: one peft ``lora_A``/``lora_B`` pair per ``nn.Linear`` of
``FluxTransformer2DModel`` (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), no alpha tensors, the
scale ``alpha / rank`` applied by peft. The other trainers name the layers of Black Forest Labs' original model
instead (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``.lora_up.weight``, ``.alpha``) and the
reader applies ``alpha / rank`` with ``rank`` the rows of ``lora_down``. Where BFL's model has one fused layer for
several of diffusers' (q, k, v -> ``img_attn_qkv``; q, k, v and the MLP input -> ``single_blocks_N_linear1``) the
parts become one LoRA whose product is exactly theirs: their downs stacked (rank ``parts * rank``), a
block-diagonal up, and ``alpha`` multiplied by the number of parts so that ``alpha / rank`` stays the same. A part
that was not trained gets zero rows in the down and a zero block in the up, so every fused LoRA has the same
block layout; diffusers' reader (``_convert_kohya_flux_lora_to_diffusers``) recognises that layout as "sparse" and
splits it back into one rank-``rank`` LoRA per part, the untrained ones all zero.

Two details follow what the readers do. BFL's final modulation (``final_layer.adaLN_modulation.1``) puts shift
before scale where diffusers' ``norm_out.linear`` puts scale first, so the up's two halves are swapped. And
diffusers' reader ignores ``.alpha`` for the two ``final_layer`` layers, so their scale is baked into the weights
and their ``.alpha`` is the rank (scale 1): every reader then applies the same product.

What diffusers 0.42.1's reader does not read back (kohya and ComfyUI do): it splits ``linear1`` at FLUX.1's
widths, hard-coded (3072 and 12288), so it asserts on a single-block LoRA of a narrower model; and it returns the
layers outside the blocks (``img_in``, ``txt_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``final_layer``)
without the ``transformer.`` prefix, so ``load_lora_weights`` drops them silently.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.fsutil import sha256_file
from brandtune.provenance import safetensors_metadata

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# A fused BFL layer: its name and the diffusers modules it is made of, in the order of its output rows.
_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_ADD_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")

#: A double block's (``transformer_blocks.N``) layers: diffusers' module -> (BFL layer, fused parts or None).
_DOUBLE: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{part: ("img_attn_qkv", _QKV) for part in _QKV},
    "attn.to_out.0": ("img_attn_proj", None),
    **{part: ("txt_attn_qkv", _ADD_QKV) for part in _ADD_QKV},
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    "norm1.linear": ("img_mod_lin", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
#: A single block's (``single_transformer_blocks.N``) layers.
_SINGLE: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{part: ("linear1", _LINEAR1) for part in _LINEAR1},
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
#: The layers outside the blocks.
_TOP: dict[str, str] = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
    "proj_out": "final_layer_linear",
}
#: Layers whose up rows are (scale, shift) in diffusers and (shift, scale) in BFL's model.
_SWAP_SCALE_SHIFT = {"lora_unet_final_layer_adaLN_modulation_1"}
#: Layers whose ``.alpha`` diffusers' reader ignores: their scale goes into the weights instead.
_BAKE_SCALE = {"lora_unet_final_layer_adaLN_modulation_1", "lora_unet_final_layer_linear"}
#: FluxSingleTransformerBlock's MLP width over its model width.
_MLP_RATIO = 4

_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")
_PEFT_SUFFIX = re.compile(r"(.+)\.(lora_A|lora_B)\.weight")


def _unmappable(key: str, why: str) -> TrainingError:
    return TrainingError(
        f"cannot export LoRA key {key!r} to the kohya FLUX layout: {why}; export only adapters on "
        "FluxTransformer2DModel's Linear layers (or use the diffusers-format file)"
    )


def _target(module: str, key: str) -> tuple[str, tuple[str, ...] | None, str | None]:
    """The BFL layer name of a diffusers module path, the fused parts, and which part this module is."""
    match = _BLOCK.fullmatch(module)
    if match:
        kind, index, rest = match.groups()
        double = kind == "transformer_blocks"
        table = _DOUBLE if double else _SINGLE
        bfl = f"double_blocks_{index}" if double else f"single_blocks_{index}"
        if rest not in table:
            raise _unmappable(key, f"{kind}.{index} has no FLUX layer {rest!r} that kohya names")
        name, parts = table[rest]
        return f"lora_unet_{bfl}_{name}", parts, rest if parts else None
    if module in _TOP:
        return f"lora_unet_{_TOP[module]}", None, None
    raise _unmappable(key, f"{module!r} is not a layer of FluxTransformer2DModel that kohya names")


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    import torch

    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _part_width(part: str, in_features: int) -> int:
    """Output rows of one part of a fused layer: FLUX's attention projections keep the model width, proj_mlp is
    ``_MLP_RATIO`` times it (the same widths diffusers' reader assumes when it splits the layer)."""
    return in_features * _MLP_RATIO if part == "proj_mlp" else in_features


def flux_to_kohya(state_dict: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """Convert a diffusers-format FLUX.1 transformer LoRA to the kohya/BFL key layout.

    Args:
        state_dict: peft-layout LoRA weights of a ``FluxTransformer2DModel``, as ``FluxPipeline.save_lora_weights``
            writes them (``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``; the ``transformer.``
            prefix may be absent, as in ``get_peft_model_state_dict``'s output).
        alpha: The LoRA alpha the adapter was trained with (peft's ``lora_alpha``).
        rank: The LoRA rank (peft's ``r``); every module's ``lora_A`` must have this many rows.

    Returns:
        ``lora_unet_<BFL layer>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` tensors (alpha a float32
        scalar) that apply, with kohya's ``alpha / rows of lora_down`` scale, exactly the adapter's product
        ``alpha / rank * lora_B @ lora_A`` to each layer.

    Raises:
        TrainingError: A key is not a LoRA weight of a FluxTransformer2DModel Linear layer, a module lacks its
            ``lora_A`` or ``lora_B``, a module's rank is not ``rank``, or ``alpha``/``rank`` are not positive.
    """
    import torch

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise TrainingError(f"LoRA rank must be a positive integer for the kohya export, got {rank!r}")
    if not alpha > 0:
        raise TrainingError(f"LoRA alpha must be positive for the kohya export, got {alpha!r}")
    scale = alpha / rank

    # diffusers module path -> {"lora_A": tensor, "lora_B": tensor}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    first_key: dict[str, str] = {}
    for key, tensor in state_dict.items():
        match = _PEFT_SUFFIX.fullmatch(key)
        if not match:
            raise _unmappable(
                key, "it is not a peft lora_A/lora_B weight (LoRA biases and DoRA are not supported)"
            )
        module, which = match.groups()
        if module.startswith(("text_encoder", "text_model.", "encoder.")):
            raise _unmappable(
                key, "it belongs to a text encoder, and this export covers the transformer only"
            )
        module = module.removeprefix("transformer.")
        if tensor.ndim != 2:
            raise _unmappable(
                key, f"it has shape {tuple(tensor.shape)}, not a Linear layer's 2-D LoRA weight"
            )
        pairs.setdefault(module, {})[which] = tensor
        first_key.setdefault(module, key)

    layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # BFL name -> part (or "") -> pair
    fused_parts: dict[str, tuple[str, ...]] = {}
    for module, pair in pairs.items():
        key = first_key[module]
        name, parts, part = _target(module, key)
        missing = {"lora_A", "lora_B"} - pair.keys()
        if missing:
            raise _unmappable(key, f"module {module!r} has no {missing.pop()} weight")
        down, up = pair["lora_A"], pair["lora_B"]
        if down.shape[0] != rank or up.shape[1] != down.shape[0]:
            raise _unmappable(
                key,
                f"module {module!r} has rank {down.shape[0]} (lora_A {tuple(down.shape)}, lora_B "
                f"{tuple(up.shape)}) but the adapter's rank is {rank}",
            )
        layers.setdefault(name, {})[part or ""] = pair
        if parts:
            fused_parts[name] = parts

    out: dict[str, torch.Tensor] = {}
    for name, by_part in layers.items():
        parts = fused_parts.get(name)
        if parts is None:
            down, up = by_part[""]["lora_A"], by_part[""]["lora_B"]
            layer_alpha = alpha
        else:
            down, up = _fuse(name, parts, by_part, rank)
            layer_alpha = alpha * len(parts)
        if name in _SWAP_SCALE_SHIFT:
            up = _swap_scale_shift(up)
        if name in _BAKE_SCALE:
            root = math.sqrt(scale)
            down, up, layer_alpha = down * root, up * root, float(rank)
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(layer_alpha), dtype=torch.float32)
    return out


def _fuse(
    name: str, parts: tuple[str, ...], by_part: dict[str, dict[str, torch.Tensor]], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA for a fused layer: the parts' downs stacked, their ups on the block diagonal, zeros for a part
    that was not trained."""
    import torch

    present = next(iter(by_part.values()))
    in_features = present["lora_A"].shape[1]
    dtype, device = present["lora_A"].dtype, present["lora_A"].device
    widths = [_part_width(part, in_features) for part in parts]
    for part, pair in by_part.items():
        expected = widths[parts.index(part)]
        if pair["lora_A"].shape[1] != in_features or pair["lora_B"].shape[0] != expected:
            raise TrainingError(
                f"cannot fuse the LoRA of {part!r} into kohya layer {name!r}: lora_A "
                f"{tuple(pair['lora_A'].shape)} and lora_B {tuple(pair['lora_B'].shape)} do not fit a FLUX layer "
                f"with input width {in_features} (expected {expected} output rows)"
            )
    down = torch.zeros(len(parts) * rank, in_features, dtype=dtype, device=device)
    up = torch.zeros(sum(widths), len(parts) * rank, dtype=present["lora_B"].dtype, device=device)
    row = 0
    for index, (part, width) in enumerate(zip(parts, widths, strict=True)):
        pair = by_part.get(part)
        if pair is not None:
            down[index * rank : (index + 1) * rank] = pair["lora_A"]
            up[row : row + width, index * rank : (index + 1) * rank] = pair["lora_B"]
        row += width
    return down, up


def export_flux_kohya_file(weights: Path, out: Path, provenance: dict[str, Any]) -> str:
    """Convert a diffusers-format FLUX.1 LoRA file to the kohya/BFL layout; returns the new file's sha256.

    Args:
        weights: The adapter's ``pytorch_lora_weights.safetensors`` (transformer LoRA only).
        out: The kohya file to write.
        provenance: The adapter's provenance; its ``rank`` and ``alpha`` (default: the rank) give the scale, and
            it is written into the metadata as ``brandtune.*`` keys next to ``ss_network_dim``/``ss_network_alpha``.

    Returns:
        The sha256 of the written file.

    Raises:
        TrainingError: ``provenance`` has no rank, or the weights hold a key :func:`flux_to_kohya` cannot map.
    """
    from safetensors.torch import load_file, save_file

    rank = provenance.get("rank")
    if rank is None:
        raise TrainingError(
            f"cannot export {weights} to the kohya FLUX layout: its provenance records no LoRA rank"
        )
    recorded_alpha = provenance.get("alpha")
    alpha = float(rank) if recorded_alpha is None else float(recorded_alpha)
    kohya = flux_to_kohya(load_file(weights), alpha=alpha, rank=int(rank))
    meta = {
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank if recorded_alpha is None else recorded_alpha),
    }
    meta.update(safetensors_metadata(provenance))
    save_file(kohya, out, metadata=meta)
    logger.debug("wrote the kohya FLUX export %s (%d tensors)", out, len(kohya))
    return sha256_file(out)
