"""brandtune.training.kohya_flux: a FLUX.1 LoRA in the kohya/BFL layout applies exactly what the diffusers file does.

The round trips go through diffusers' own reader of such files (``_convert_kohya_flux_lora_to_diffusers``, which
``FluxPipeline.load_lora_weights`` calls), on a tiny FluxPipeline built from config here, and at FLUX.1's real
widths on bare tensors.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from brandtune.errors import TrainingError
from brandtune.fsutil import sha256_file
from brandtune.training.kohya_flux import export_flux_kohya_file, flux_to_kohya

pytestmark = pytest.mark.usefixtures("torch_threads")

RANK = 4
WIDTH = 32  # the tiny transformer's model width (2 heads of 16)
WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA = "kohya_lora.safetensors"
PROMPT = "a photo of acme bottle on a beach"
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
# "proj_out" is both the single block's fused output and the final layer's projection, outside the blocks.
BLOCK_MLP = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"]
MLP = [*BLOCK_MLP, "proj_out"]
MODULATION = ["norm1.linear", "norm1_context.linear", "norm.linear"]
TOP_LEVEL = ["x_embedder", "context_embedder", "linear_1", "linear_2", "norm_out.linear", "proj_out"]
# The one warning diffusers logs for any transformer-only FLUX LoRA: it offers the file to the CLIP text encoder too.
NO_TEXT_ENCODER_PART = "No LoRA keys associated to CLIPTextModel found"


@pytest.fixture(scope="module")
def flux_dir() -> Path:
    """builtin:tiny-flux: the FLUX.1-dev layout (guidance embedding), seeded random weights, model width 32."""
    from brandtune.models import resolve_base

    return resolve_base("builtin:tiny-flux").path


@pytest.fixture
def reader_at_tiny_widths(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' reader splits ``single_blocks_N_linear1`` at FLUX.1's widths, hard-coded as the constant
    ``dims=[3072, 3072, 3072, 12288]`` (q, k, v, MLP), and asserts the up has that many rows; the tiny model's are
    32, 32, 32, 128. This swaps that one constant in the reader's code for the tiny widths, so the same reader
    code runs; the tensor test below runs it unchanged at FLUX.1's widths."""
    from diffusers.loaders import lora_conversion_utils

    reader = lora_conversion_utils._convert_kohya_flux_lora_to_diffusers
    flux1, tiny = (3072, 3072, 3072, 12288), (WIDTH, WIDTH, WIDTH, 4 * WIDTH)
    swapped = []

    def swap(code: types.CodeType) -> types.CodeType:
        consts = []
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                const = swap(const)
            elif const == flux1:
                swapped.append(code.co_name)
                const = tiny
            consts.append(const)
        return code.replace(co_consts=tuple(consts))

    patched = swap(reader.__code__)
    assert swapped == ["_convert_sd_scripts_to_ai_toolkit"], "diffusers' reader changed: revisit this fixture"
    monkeypatch.setattr(reader, "__code__", patched)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _warnings_of_diffusers() -> Iterator[list[str]]:
    """diffusers' log warnings while the block runs (its loggers do not propagate to the root, so no caplog)."""
    root = logging.getLogger("diffusers")
    handler, level = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _pipeline(flux_dir: Path) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(flux_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: Any) -> tuple[Any, list[Any]]:
    """A 32x32 px image in 2 steps with a fixed seed (uint8), and what the denoiser said at each step."""
    import numpy as np
    import torch

    outputs: list[torch.Tensor] = []
    hook = pipe.transformer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0].detach().clone()))
    try:
        image = pipe(
            PROMPT,
            height=32,
            width=32,
            num_inference_steps=2,
            max_sequence_length=16,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]
    finally:
        hook.remove()
    return np.round(image * 255).astype(np.uint8), outputs


def _train(pipe: Any, targets: list[str], alpha: float) -> None:
    """A LoRA as training leaves it: peft layers on ``targets`` with every lora_B set to seeded non-zero values."""
    import torch
    from peft import LoraConfig

    config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    pipe.transformer.add_adapter(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 1.0)


def _lora_layers(pipe: Any) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name for name, module in pipe.transformer.named_modules() if isinstance(module, LoraLayer)}


def _load_kohya(pipe: Any, folder: Path, top_level: bool) -> None:
    from diffusers import FluxPipeline

    if not top_level:
        pipe.load_lora_weights(str(folder), weight_name=KOHYA)
        return
    # diffusers 0.42.1's reader returns the layers outside the blocks (x_embedder, context_embedder,
    # time_text_embed.*, norm_out.linear, proj_out) without the "transformer." prefix it gives the blocks' layers,
    # and load_lora_weights then drops them without a word. So: the same reader, the prefix put back, the same load.
    state_dict = FluxPipeline.lora_state_dict(str(folder), weight_name=KOHYA)
    state_dict = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in state_dict.items()}
    pipe.load_lora_weights(state_dict)


CASES = {
    # (targets, alpha, has top-level layers)
    "attention": (ATTENTION, float(RANK), False),
    "attention_mlp": ([*ATTENTION, *MLP], float(RANK), True),
    "alpha_not_rank": ([*ATTENTION, *BLOCK_MLP, *MODULATION], 6.0, False),
    "top_level": ([*TOP_LEVEL, *MODULATION], 6.0, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("reader_at_tiny_widths")
def test_kohya_file_generates_what_the_diffusers_file_does(case: str, flux_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    targets, alpha, top_level = CASES[case]
    base_image, base_outputs = _generate(_pipeline(flux_dir))
    trained = _pipeline(flux_dir)
    _train(trained, targets, alpha)
    trained_image, trained_outputs = _generate(trained)

    # The diffusers file, with the adapter's config in its metadata: without it diffusers reads any LoRA back with
    # alpha = rank, and an adapter trained with another alpha at the wrong scale.
    FluxPipeline.save_lora_weights(
        tmp_path / "diffusers",
        transformer_lora_layers=get_peft_model_state_dict(trained.transformer),
        transformer_lora_adapter_metadata=trained.transformer.peft_config["default"].to_dict(),
    )
    provenance = {"rank": RANK, "alpha": alpha, "base": "tiny-flux", "target_modules": targets}
    (tmp_path / "kohya").mkdir()
    digest = export_flux_kohya_file(tmp_path / "diffusers" / WEIGHTS, tmp_path / "kohya" / KOHYA, provenance)
    assert digest == sha256_file(tmp_path / "kohya" / KOHYA)
    with safe_open(tmp_path / "kohya" / KOHYA, framework="pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert meta["ss_network_dim"] == str(RANK) and meta["ss_network_alpha"] == str(alpha)
    assert meta["brandtune.base"] == "tiny-flux" and meta["brandtune.rank"] == str(RANK)
    assert all(
        k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
        for k in keys
    )
    if case != "top_level":
        assert any(k.startswith("lora_unet_double_blocks_0_") for k in keys)
        assert any(k.startswith("lora_unet_single_blocks_0_") for k in keys)
    if "to_q" in targets:  # q, k, v fused (with the MLP input in the single block)
        assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in keys
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys

    from_diffusers = _pipeline(flux_dir)
    from_diffusers.load_lora_weights(str(tmp_path / "diffusers"), weight_name=WEIGHTS)
    diffusers_image, diffusers_outputs = _generate(from_diffusers)
    from_kohya = _pipeline(flux_dir)
    with _warnings_of_diffusers() as messages:
        _load_kohya(from_kohya, tmp_path / "kohya", top_level)
    assert [m for m in messages if NO_TEXT_ENCODER_PART not in m] == []
    kohya_image, kohya_outputs = _generate(from_kohya)
    # Every trained layer has its LoRA (the fused layers' untrained parts get an all-zero one).
    assert _lora_layers(trained) <= _lora_layers(from_kohya)

    # The kohya file's LoRA is the same product split differently (stacked downs, scale folded into the weights
    # by diffusers' reader), so floats may differ in the last bits and a pixel by one level where it rounds. The
    # bound is relative to the output's scale: with the top-level layers trained, outputs reach ~500, and float32
    # rounding of those terms leaves ~1e-4 on an element near 1 (it depends on the thread count).
    for other in (diffusers_outputs, kohya_outputs):
        for got, want in zip(other, trained_outputs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert np.abs(kohya_image.astype(int) - diffusers_image.astype(int)).max() <= 1
    assert np.abs(kohya_image.astype(int) - trained_image.astype(int)).max() <= 1
    assert np.abs(kohya_image.astype(int) - base_image.astype(int)).max() > 8, "the adapter changes the image"
    assert not torch.allclose(kohya_outputs[0], base_outputs[0], atol=1e-3)


def _flux1_block_lora() -> dict[str, Any]:
    """A peft LoRA at FLUX.1's widths (model 3072, MLP 12288) on every Linear of one double and one single block and
    on every layer outside the blocks, but the double block's to_k and the single block's proj_mlp."""
    import torch

    width, mlp, generator = 3072, 12288, torch.Generator().manual_seed(2)
    shapes = {
        "time_text_embed.timestep_embedder.linear_1": (256, width),
        "time_text_embed.timestep_embedder.linear_2": (width, width),
        "time_text_embed.guidance_embedder.linear_1": (256, width),
        "time_text_embed.guidance_embedder.linear_2": (width, width),
        "time_text_embed.text_embedder.linear_1": (768, width),
        "time_text_embed.text_embedder.linear_2": (width, width),
        "context_embedder": (4096, width),
        "x_embedder": (64, width),
        "norm_out.linear": (width, 2 * width),
        "proj_out": (width, 64),
        "transformer_blocks.0.norm1.linear": (width, 6 * width),
        "transformer_blocks.0.norm1_context.linear": (width, 6 * width),
        "transformer_blocks.0.ff.net.0.proj": (width, mlp),
        "transformer_blocks.0.ff.net.2": (mlp, width),
        "transformer_blocks.0.ff_context.net.0.proj": (width, mlp),
        "transformer_blocks.0.ff_context.net.2": (mlp, width),
        "single_transformer_blocks.0.norm.linear": (width, 3 * width),
        "single_transformer_blocks.0.proj_out": (width + mlp, width),
    }
    for name in ["to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]:
        shapes[f"transformer_blocks.0.attn.{name}"] = (width, width)
    for name in ["to_q", "to_k", "to_v"]:
        shapes[f"single_transformer_blocks.0.attn.{name}"] = (width, width)
    state_dict = {}
    for module, (fan_in, fan_out) in shapes.items():
        state_dict[f"transformer.{module}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=generator)
        state_dict[f"transformer.{module}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=generator)
    return state_dict


@pytest.mark.parametrize("alpha", [float(RANK), 1.0, 6.0])
def test_round_trip_through_the_diffusers_reader_at_flux1_widths(alpha: float) -> None:
    """Every layer kind, parts of fused layers missing, through diffusers' reader exactly as it ships: each layer's
    ``scale * B @ A`` comes back (checked on random inputs), the parts not trained come back zero."""
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    peft = _flux1_block_lora()
    kohya = flux_to_kohya(dict(peft), alpha=alpha, rank=RANK)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 3072 + 12288, 4 * RANK)
    read = _convert_kohya_flux_lora_to_diffusers(dict(kohya))
    read = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in read.items()}

    modules = {k.rsplit(".lora_", 1)[0] for k in peft}
    untrained = {
        "transformer.transformer_blocks.0.attn.to_k",
        "transformer.single_transformer_blocks.0.proj_mlp",
    }
    assert {k.rsplit(".lora_", 1)[0] for k in read} == modules | untrained
    generator = torch.Generator().manual_seed(3)
    for module in sorted(modules | untrained):
        down, up = read[f"{module}.lora_A.weight"], read[f"{module}.lora_B.weight"]
        probe = torch.randn(down.shape[1], 3, generator=generator, dtype=torch.float64)
        got = up.double() @ (down.double() @ probe)  # diffusers loads these with scale 1 (alpha = rank)
        if module in untrained:
            assert not got.any(), module
            continue
        a, b = peft[f"{module}.lora_A.weight"].double(), peft[f"{module}.lora_B.weight"].double()
        want = alpha / RANK * (b @ (a @ probe))
        # float32 rounding of the scaled factors, summed over up to 12288 inputs: relative to the largest value
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=module)


def test_fused_layer_is_exactly_its_parts() -> None:
    """kohya applies ``alpha / rows-of-down * up @ down`` to BFL's fused layer: that is the parts' products stacked."""
    import torch

    width, generator = 8, torch.Generator().manual_seed(4)
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    peft = {}
    for part in ["attn.to_q", "attn.to_v", "proj_mlp"]:  # to_k not trained
        rows = 4 * width if part == "proj_mlp" else width
        peft[f"single_transformer_blocks.3.{part}.lora_A.weight"] = torch.randn(2, width, generator=generator)
        peft[f"single_transformer_blocks.3.{part}.lora_B.weight"] = torch.randn(rows, 2, generator=generator)
    kohya = flux_to_kohya(peft, alpha=3.0, rank=2)
    down = kohya["lora_unet_single_blocks_3_linear1.lora_down.weight"]
    up = kohya["lora_unet_single_blocks_3_linear1.lora_up.weight"]
    alpha = kohya["lora_unet_single_blocks_3_linear1.alpha"]
    assert down.shape == (8, width) and alpha.ndim == 0
    fused = alpha / down.shape[0] * up @ down
    want = []
    for part in parts:
        a = peft.get(f"single_transformer_blocks.3.{part}.lora_A.weight")
        b = peft.get(f"single_transformer_blocks.3.{part}.lora_B.weight")
        want.append(torch.zeros(width, width) if a is None else 3.0 / 2 * b @ a)
    torch.testing.assert_close(fused, torch.cat(want))


@pytest.mark.parametrize(
    ("key", "shape", "says"),
    [
        ("transformer.pos_embed.lora_A.weight", (4, 8), "not a layer of FluxTransformer2DModel"),
        (
            "transformer.transformer_blocks.0.attn.norm_q.lora_A.weight",
            (4, 8),
            "has no FLUX layer 'attn.norm_q'",
        ),
        ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", (4, 8), "text encoder"),
        (
            "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector",
            (8,),
            "not a peft lora_A/lora_B",
        ),
        ("transformer.transformer_blocks.0.attn.to_q.lora_B.bias", (8,), "not a peft lora_A/lora_B"),
    ],
)
def test_unmappable_key_raises_naming_it(key: str, shape: tuple[int, ...], says: str) -> None:
    import torch

    state_dict = {
        "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": torch.zeros(4, 8),
        "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": torch.zeros(8, 4),
        key: torch.zeros(shape),
    }
    with pytest.raises(TrainingError, match="kohya FLUX layout") as error:
        flux_to_kohya(state_dict, alpha=4.0, rank=4)
    assert repr(key) in str(error.value) and says in str(error.value)


def test_half_a_pair_or_another_rank_raises() -> None:
    import torch

    only_down = {"transformer.proj_out.lora_A.weight": torch.zeros(4, 8)}
    with pytest.raises(TrainingError, match="has no lora_B weight"):
        flux_to_kohya(only_down, alpha=4.0, rank=4)
    rank_8 = {
        "transformer.proj_out.lora_A.weight": torch.zeros(8, 8),
        "transformer.proj_out.lora_B.weight": torch.zeros(8, 8),
    }
    with pytest.raises(TrainingError, match=r"has rank 8 .* the adapter's rank is 4"):
        flux_to_kohya(rank_8, alpha=4.0, rank=4)
