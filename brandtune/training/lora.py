"""LoRA layers: attaching them with peft, saving them in the diffusers format, exporting kohya format.

The saved adapter is ``pytorch_lora_weights.safetensors`` exactly as ``pipe.save_lora_weights`` writes it (so plain
diffusers loads it with ``pipe.load_lora_weights(dir)``), with brandtune's provenance added to the safetensors
metadata under ``brandtune.*`` keys and written again, readable, in ``brandtune.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.fsutil import atomic_write_json, replace_dir, sha256_file
from brandtune.provenance import PROVENANCE_NAME, WEIGHTS_NAME, safetensors_metadata

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KOHYA_NAME = "kohya_lora.safetensors"


def check_targets(model: torch.nn.Module, targets: list[str], what: str) -> None:
    """Raise a clear error if a target module name matches no module of ``model``."""
    import torch

    linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in linear_names):
            examples = sorted({n.rsplit(".", 1)[-1] for n in linear_names})[:12]
            raise TrainingError(
                f"LoRA target module {target!r} matches no layer of the {what}; "
                f"layer names there include: {', '.join(examples)}"
            )


def add_lora(
    model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str], what: str
) -> None:
    """Freeze ``model`` and attach trainable LoRA layers (B initialised to zero: no change until trained).

    diffusers models use their own ``add_adapter``; transformers text encoders get the layers from peft directly
    (``inject_adapter_in_model``), because transformers' ``add_adapter`` demands a newer peft than diffusers does.
    """
    import torch
    from diffusers import ModelMixin
    from peft import LoraConfig, inject_adapter_in_model

    from brandtune.training.fastpath import step_lora_linear

    check_targets(model, targets, what)
    model.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets
    )
    # the linear layers get the training step's leaner LoRA layer (a peft LoRA layer in every other respect)
    config._register_custom_module({torch.nn.Linear: step_lora_linear()})
    if isinstance(model, ModelMixin):
        model.add_adapter(config)
    else:
        inject_adapter_in_model(config, model)


def lora_state_dict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The LoRA weights of a peft-adapted model in peft's key layout (``lora_A``/``lora_B``), read from
    ``state_dict`` (e.g. the weights gathered whole under FSDP) when given, else from the model.

    diffusers' ``load_lora_weights`` reads that layout as it is. Its older layout (``lora.down``/``lora.up``, what
    ``convert_state_dict_to_diffusers`` makes) covers only the attention projections: a LoRA that also targets
    convolutions or feed-forward layers came out half in each, and diffusers then silently dropped the attention
    half when loading.
    """
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state_dict)


def save_adapter(
    dest: Path,
    family: str,
    denoiser: torch.nn.Module,
    text_encoders: list[torch.nn.Module],
    provenance: dict[str, Any],
    export_kohya: bool = False,
    weights: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the adapter folder ``dest`` atomically: weights, provenance, optional kohya export.

    The weights are what the family's pipeline ``save_lora_weights`` writes, with each module's LoRA config in the
    file's metadata (so ``load_lora_weights`` restores a non-default alpha too). ``weights`` are the modules'
    trainable weights by parameter name, denoiser first (what FSDP's shards gathered give); None: the modules' own.
    """
    import diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from brandtune.models.family import FAMILY_INFO

    info = FAMILY_INFO[family]
    pipeline_cls = getattr(diffusers, info.pipeline_class)
    modules = {info.denoiser: denoiser}
    modules.update({spec.folder: enc for spec, enc in zip(info.text_encoders, text_encoders, strict=False)})
    layers: dict[str, Any] = {}
    for i, (name, module) in enumerate(modules.items()):
        layers[f"{name}_lora_layers"] = lora_state_dict(module, weights[i] if weights else None)
        if (peft_config := getattr(module, "peft_config", None)) is not None:
            layers[f"{name}_lora_adapter_metadata"] = peft_config["default"].to_dict()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        pipeline_cls.save_lora_weights(staging, safe_serialization=True, **layers)
        weights = staging / WEIGHTS_NAME
        with safe_open(weights, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(weights)
        metadata.update(safetensors_metadata(provenance))
        save_file(tensors, weights, metadata=metadata)
        files = {WEIGHTS_NAME: sha256_file(weights)}
        if export_kohya:
            if family == "flux":
                from brandtune.training.kohya_flux import export_flux_kohya_file

                files[KOHYA_NAME] = export_flux_kohya_file(weights, staging / KOHYA_NAME, provenance)
            else:
                files[KOHYA_NAME] = export_kohya_file(weights, staging / KOHYA_NAME, provenance)
        atomic_write_json(staging / PROVENANCE_NAME, {**provenance, "files": files})
        replace_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def export_kohya_file(weights: Path, out: Path, provenance: dict[str, Any]) -> str:
    """Convert a diffusers-format LoRA file to the kohya/A1111 layout; returns the new file's sha256."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(weights)))
    meta = {
        "ss_network_dim": str(provenance.get("rank", "")),
        "ss_network_alpha": str(provenance.get("alpha", "")),
    }
    meta.update(safetensors_metadata(provenance))
    save_file({k: v.contiguous() for k, v in kohya.items()}, out, metadata=meta)
    return sha256_file(out)


def read_provenance(adapter_dir: Path) -> dict[str, Any]:
    """The ``brandtune.json`` of an adapter folder."""
    path = Path(adapter_dir) / PROVENANCE_NAME
    if not path.is_file():
        raise TrainingError(f"{adapter_dir} is not a brandtune adapter folder (no {PROVENANCE_NAME})")
    return json.loads(path.read_text())
