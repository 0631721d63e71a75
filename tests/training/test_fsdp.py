"""FSDP (configs/accelerate/fsdp.yaml) on this machine's CPUs, two gloo processes, builtin:tiny-flux.

accelerate 1.15 runs FSDP only on GPUs: ``AcceleratorState`` turns ``ACCELERATE_USE_FSDP`` into
``DistributedType.FSDP`` only for GPU-like process types, so CPU processes silently train DDP (MULTI_CPU), or,
without ``ACCELERATE_USE_CPU``, as separate one-process trainings. torch's FSDP2 itself runs on CPU with gloo. So:

- the limitation is pinned down as it is (these tests fail the day accelerate shards on CPU: then make brandtune's
  launcher let FSDP through on CPU and turn the gate-lifted test below into the plain one);
- brandtune refuses an FSDP launch where it cannot shard, before anything is written;
- the shipped wrap policy (the denoiser's ``_no_split_modules``) finds the blocks of every family;
- brandtune's training runs under FSDP2 with accelerate's CPU gate lifted in the two processes (a
  ``sitecustomize`` that does for MULTI_CPU what accelerate does for GPUs): the only way to run its FSDP code here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from training_helpers import quick

from brandtune.errors import TrainingError

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

FLUX = "builtin:tiny-flux"
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "fsdp.yaml"
#: What the two processes need on CPU; the rest is the shipped file as it is.
CPU = {"num_processes": 2, "use_cpu": True, "mixed_precision": "no"}

#: Imported by every Python process started with this folder on PYTHONPATH; acts in accelerate's FSDP workers only.
#: It sets FSDP where accelerate 1.15 leaves MULTI_CPU (state.py, ``AcceleratorState.__init__``: only the
#: MULTI_GPU/NPU/XPU/... branch reaches ``DistributedType.FSDP``) and prints what ``prepare`` made of the model.
GATE_LIFTED = """
import os

if os.environ.get("LOCAL_RANK") is not None and os.environ.get("ACCELERATE_USE_FSDP") == "true":
    import accelerate
    import accelerate.state as state
    from accelerate.utils import DistributedType

    init, prepare = state.AcceleratorState.__init__, accelerate.Accelerator.prepare

    def lifted(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    def reporting(self, *args, **kwargs):
        out = prepare(self, *args, **kwargs)
        print(f"<gate-lifted: rank {self.process_index} prepared {type(out[0]).__name__}>", flush=True)
        return out

    state.AcceleratorState.__init__, accelerate.Accelerator.prepare = lifted, reporting
"""

#: What brandtune's main-process-only saving does with FSDP2's DTensor shards (safetensors cannot write them).
SAVE_ON_MAIN_ONLY = "Attempted to access the data pointer on an invalid python storage"


def _config(tmp_path: Path, **overrides: Any) -> Path:
    """The shipped fsdp.yaml with ``overrides`` (``fsdp_config`` entries merged)."""
    cfg = yaml.safe_load(SHIPPED.read_text())
    fsdp = {**cfg["fsdp_config"], **overrides.pop("fsdp_config", {})}
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump({**cfg, **overrides, "fsdp_config": fsdp}))
    return path


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``cmd`` with this environment plus ``env`` (``ACCELERATE_USE_CPU`` only if ``env`` has it)."""
    base = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**base, **env}, timeout=timeout, check=False
    )


def _launch_module() -> Any:
    """brandtune.training.launch, the module (``brandtune.training.launch`` is also its function)."""
    import importlib

    return importlib.import_module("brandtune.training.launch")


PROBE = """
import torch
from accelerate import Accelerator

accelerator = Accelerator()
model = accelerator.prepare(torch.nn.Linear(4, 4))
print(f"<rank {accelerator.process_index}/{accelerator.num_processes}: {accelerator.distributed_type.value} "
      f"{type(model).__name__}>", flush=True)
"""


@pytest.mark.parametrize(
    ("use_cpu_env", "expected"),
    [
        # what a CPU launch needs for the gloo group: accelerate then builds DDP, not FSDP
        ({"ACCELERATE_USE_CPU": "true"}, ["rank 0/2: MULTI_CPU DistributedDataParallel",
                                          "rank 1/2: MULTI_CPU DistributedDataParallel"]),
        # `accelerate launch` alone: every process on its own, nothing distributed at all
        ({}, ["rank 0/1: NO Linear", "rank 0/1: NO Linear"]),
    ],
)  # fmt: skip
def test_accelerate_does_not_shard_on_cpu(
    tmp_path: Path, use_cpu_env: dict[str, str], expected: list[str]
) -> None:
    """The limitation itself: ``accelerate launch`` of the CPU copy of fsdp.yaml starts two processes with
    ``ACCELERATE_USE_FSDP=true``, and neither gets FSDP. Fails the day accelerate shards on CPU."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_config(tmp_path, **CPU)),
           str(script)]  # fmt: skip
    proc = _run(cmd, {"OMP_NUM_THREADS": "1", **use_cpu_env}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        sorted(re.findall(r"<(rank [^>]+)>", proc.stdout)) == expected
    )  # the two processes' lines may interleave


@pytest.mark.parametrize(
    ("overrides", "num_processes", "message"),
    [
        (CPU, 2, r"FSDP with use_cpu: true does not shard: accelerate \S+ runs FSDP only on GPUs and trains CPU "
                 r"processes as DDP; to train on CPUs use configs/accelerate/cpu_2proc.yaml"),
        ({}, 1, r"FSDP needs a GPU per process: 4 processes on this machine but 0 GPU\(s\) visible"),
        ({"fsdp_config": {"fsdp_version": 1}}, 2, r"fsdp_version 1: brandtune trains FSDP2 only"),
    ],
)  # fmt: skip
def test_launch_refuses_fsdp_where_it_cannot_shard(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
    num_processes: int,
    message: str,
) -> None:
    """No silent DDP in place of FSDP, no processes training separately: a clear error, and nothing written."""
    from brandtune.training import launch

    monkeypatch.setattr(_launch_module(), "_cuda_count", lambda: 0)
    cfg = _config(tmp_path, **overrides)
    with pytest.raises(TrainingError, match=message):
        launch(quick(tmp_path, base_model=FLUX, max_train_steps=2), num_processes=num_processes,
               accelerate_config=cfg)  # fmt: skip
    assert not (tmp_path / "run").exists()


def _tiny_denoisers() -> dict[str, Any]:
    """Each family's denoiser class, tiny, with the block layout of its real bases (SD 1.5, SDXL, FLUX.1, SD3)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    unet = {"block_out_channels": (8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4, "cross_attention_dim": 8,
            "attention_head_dim": 2, "sample_size": 8}  # fmt: skip
    flux = {"patch_size": 1, "in_channels": 4, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 4,
            "num_attention_heads": 2, "joint_attention_dim": 8, "pooled_projection_dim": 8,
            "axes_dims_rope": (0, 2, 2)}  # fmt: skip
    sd3 = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 1,
           "attention_head_dim": 4, "num_attention_heads": 2, "caption_projection_dim": 8, "joint_attention_dim": 8,
           "pooled_projection_dim": 8}  # fmt: skip
    return {
        "sd15": UNet2DConditionModel(
            **unet,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ),
        "sdxl": UNet2DConditionModel(
            **unet,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "flux": FluxTransformer2DModel(**flux),
        "sd3": SD3Transformer2DModel(**sd3),
    }


def test_shipped_wrap_policy_wraps_the_blocks_of_every_family() -> None:
    """fsdp.yaml names no classes, so accelerate wraps each denoiser's ``_no_split_modules``: the UNet's attention
    and ResNet blocks (and up blocks), FLUX's two block kinds, SD3's joint blocks. A class list would have to
    match every family: ``BasicTransformerBlock,ResnetBlock2D`` (UNet only) stops FLUX and SD3 with an error."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    fsdp = yaml.safe_load(SHIPPED.read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    wrapped = {}
    for name, model in _tiny_denoisers().items():
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"]
        )
        plugin.set_auto_wrap_policy(model)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped[name] = sorted({type(m).__name__ for m in model.modules() if policy(m)})
    unet = ["BasicTransformerBlock", "CrossAttnUpBlock2D", "ResnetBlock2D", "UpBlock2D"]
    assert wrapped == {"sd15": unet, "sdxl": unet, "flux": ["FluxSingleTransformerBlock", "FluxTransformerBlock"],
                       "sd3": ["JointTransformerBlock"]}  # fmt: skip
    unet_only = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP",
        transformer_cls_names_to_wrap=["BasicTransformerBlock", "ResnetBlock2D"],
    )  # fmt: skip
    with pytest.raises(ValueError, match="Could not find the transformer layer class BasicTransformerBlock"):
        unet_only.set_auto_wrap_policy(_tiny_denoisers()["flux"])


@pytest.mark.slow  # two processes train, one more for reference, then a pipeline: about a minute and a half
def test_fsdp2_training_with_accelerates_cpu_gate_lifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """brandtune's training of tiny FLUX under FSDP2 on two gloo processes, as brandtune launches it on two GPUs
    (its command for the shipped fsdp.yaml at ``num_processes: 2``), the processes put on CPU by
    ``ACCELERATE_USE_CPU`` and the gate lifted: an adapter (and a checkpoint) gathered from the shards, which plain
    diffusers loads, with the keys and shapes of a one-process training's."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from brandtune.models import resolve_base
    from brandtune.training import train
    from brandtune.training.result import read_result_file

    cfg = _config(tmp_path, num_processes=2, mixed_precision="no")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(GATE_LIFTED)
    train_cfg = quick(tmp_path / "fsdp", base_model=FLUX, max_train_steps=2, checkpointing_steps=1)
    config_file, result_file = tmp_path / "train.json", tmp_path / "result.json"
    config_file.write_text(json.dumps(train_cfg.model_dump(mode="json")))
    launch_module = _launch_module()
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 2)  # the command of a two-GPU machine
    cmd = launch_module.build_command(config_file, result_file, 2, cfg)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(cfg)]
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    proc = _run(cmd, {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and SAVE_ON_MAIN_ONLY in out:
        pytest.xfail(
            "brandtune/training/run.py and loop.py read the LoRA weights on the main process alone; under FSDP2 "
            "they are DTensor shards that every process must gather (see the FSDP change proposed for them)"
        )
    assert proc.returncode == 0, out[-3000:]
    assert sorted(re.findall(r"<(gate-lifted: [^>]+)>", proc.stdout)) == [
        "gate-lifted: rank 0 prepared FSDPFluxTransformer2DModel",
        "gate-lifted: rank 1 prepared FSDPFluxTransformer2DModel",
    ]
    result = read_result_file(result_file)
    assert result.steps == 2
    assert (result.run_dir / "checkpoints" / "checkpoint-00000001" / "COMPLETE").is_file()
    name = "pytorch_lora_weights.safetensors"
    sharded = load_file(result.adapter_dir / name)
    single = load_file(
        train(quick(tmp_path / "single", base_model=FLUX, max_train_steps=2)).adapter_dir / name
    )
    assert {k: v.shape for k, v in sharded.items()} == {k: v.shape for k, v in single.items()}
    pipe = FluxPipeline.from_pretrained(resolve_base(FLUX).path, use_safetensors=True)
    pipe.load_lora_weights(str(result.adapter_dir), adapter_name="brand")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="brand")
    assert {f"transformer.{k}" for k in loaded} == set(sharded)
    assert all((v == sharded[f"transformer.{k}"]).all() for k, v in loaded.items())
