"""The training step's fast paths: a leaner LoRA linear layer that computes exactly what peft's does, LoRA layers
switched off for the base prediction without a walk over the model, CPU bf16 autocast where the CPU does bf16
natively (detected, never assumed; off by default), loss reads every few steps, and the compile modes."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from training_helpers import quick

from brandtune.training import train
from brandtune.training.fastpath import adapters_off, cpu_bf16_step, step_lora_linear
from brandtune.training.plan import cpu_bf16_native

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_adapters_off_gives_the_base_model_and_restores_the_lora() -> None:
    import torch

    from brandtune.models import load_components, resolve_base
    from brandtune.training.lora import add_lora

    unet = load_components(resolve_base("builtin:tiny")).denoiser
    cfg = unet.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
    text = torch.randn(1, 7, cfg.cross_attention_dim, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        base = unet(x, t, text).sample
    add_lora(unet, 4, 4, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], "UNet")
    lora = [p for n, p in unet.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_(generator=gen)  # peft starts lora_B at zero: make the adapter change the output
        adapted = unet(x, t, text).sample
        assert not torch.allclose(adapted, base)
        with adapters_off(unet):
            assert torch.equal(unet(x, t, text).sample, base)
        assert torch.equal(unet(x, t, text).sample, adapted)
    assert all(p.requires_grad for p in lora), "the LoRA weights train again after the block"


@pytest.mark.parametrize(("alpha", "dropout"), [(4.0, 0.0), (8.0, 0.0), (4.0, 0.5)])
def test_the_step_lora_layer_computes_what_peft_computes_bit_for_bit(alpha: float, dropout: float) -> None:
    import torch
    from peft.tuners.lora.layer import Linear

    from brandtune.models import load_components, resolve_base
    from brandtune.training.lora import add_lora

    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    lean = load_components(resolve_base("builtin:tiny")).denoiser
    add_lora(lean, 4, alpha, dropout, targets, "UNet")
    lean.train()  # (LoRA dropout draws only in training mode)
    layers = [m for m in lean.modules() if isinstance(m, Linear)]
    assert layers and all(type(m) is step_lora_linear() for m in layers), (
        "every projection gets the step layer"
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lean.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=gen)  # peft starts lora_B at zero: make the adapter change the output
    cfg = lean.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=gen)
    text = torch.randn(2, 7, cfg.cross_attention_dim, generator=gen)
    t = torch.tensor([500, 20])

    def run(forward: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
        saved = step_lora_linear().forward
        step_lora_linear().forward = forward  # type: ignore[method-assign]
        try:
            torch.manual_seed(1)  # the same dropout masks for both
            out = lean(x, t, text).sample
            out.pow(2).mean().backward()
        finally:
            step_lora_linear().forward = saved  # type: ignore[method-assign]
        grads = [p.grad.clone() for p in lean.parameters() if p.requires_grad]
        lean.zero_grad(set_to_none=True)
        return out.detach(), grads

    mine, my_grads = run(step_lora_linear().forward)
    peft, peft_grads = run(Linear.forward)
    assert torch.equal(mine, peft)
    assert all(torch.equal(a, b) for a, b in zip(my_grads, peft_grads, strict=True))
    with torch.no_grad(), adapters_off(lean):  # switched off: the base model, through peft's own path
        base = lean(x, t, text).sample
    assert not torch.allclose(base, mine)


def _plan(**config: object) -> SimpleNamespace:
    cfg = {"cpu_bf16": True, "mixed_precision": "no", **config}
    return SimpleNamespace(config=SimpleNamespace(**cfg), components=None)


def test_cpu_bf16_only_on_a_cpu_that_does_bf16_natively(caplog: pytest.LogCaptureFixture) -> None:
    from accelerate import Accelerator

    from brandtune.training.plan import _cpu_flags

    accelerator = Accelerator(cpu=True)
    native = cpu_bf16_native()
    assert not native or "amx_bf16" in _cpu_flags(), "never without the CPU saying AMX-BF16"
    with caplog.at_level(logging.INFO, logger="brandtune.training.fastpath"):
        assert cpu_bf16_step(_plan(), accelerator) is native
    said = "CPU supports bf16 (AMX): training the UNet under bf16 autocast" in caplog.text
    assert said is native, caplog.text
    assert cpu_bf16_step(_plan(cpu_bf16=False), accelerator) is False
    assert cpu_bf16_step(_plan(mixed_precision="bf16"), accelerator) is False, "mixed precision decides then"


def test_cpu_bf16_is_off_by_default_and_keeps_the_config_hash() -> None:
    from brandtune.models.resolve import resolve_base

    off = quick(Path("/nonexistent"))
    assert off.cpu_bf16 is False
    defaults = resolve_base("builtin:tiny").training_defaults
    assert "cpu_bf16" not in off.with_base_defaults(defaults).identity()
    on = off.model_copy(update={"cpu_bf16": True})
    assert on.with_base_defaults(defaults).identity()["cpu_bf16"] is True


@pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU does not do bf16 natively (no AMX-BF16)")
def test_cpu_bf16_trains_under_autocast(
    tmp_path: Path, acme_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="brandtune.training.fastpath"):
        on = train(quick(tmp_path / "on", max_train_steps=2, cpu_bf16=True, validation_inference_steps=1))
    assert "training the UNet under bf16 autocast" in caplog.text
    off = train(quick(tmp_path / "off", max_train_steps=2, validation_inference_steps=1))
    assert on.final_loss != off.final_loss, "the step ran in another precision"
    assert abs(on.final_loss - off.final_loss) < 0.05 * off.final_loss, (on.final_loss, off.final_loss)


def test_pending_losses_are_read_in_order_and_the_first_nan_is_named() -> None:
    import torch

    from brandtune.errors import TrainingError
    from brandtune.training.loop import PendingLosses, _read_losses

    plan = SimpleNamespace(config=SimpleNamespace(nan_check=True))
    state = SimpleNamespace(tracker=None)
    pending = PendingLosses()
    for step, value in ((1, 0.5), (2, 0.25)):
        pending.add(step, torch.tensor(value), 1e-3, 0.1)
    assert _read_losses(plan, state, pending, None) == 0.25
    assert pending.read() == [], "read once"
    for step, value in ((3, 0.5), (4, float("inf")), (5, float("nan"))):
        pending.add(step, torch.tensor(value), 1e-3, 0.1)
    with pytest.raises(TrainingError, match=r"^loss became inf at step 4; last good checkpoint: ck\. "):
        _read_losses(plan, state, pending, Path("ck"))


def _nan_from(monkeypatch: pytest.MonkeyPatch, step: int) -> list[int]:
    """Make the real loss NaN from optimizer step ``step`` on; returns the list of steps run (grows)."""
    from brandtune.training import loop

    real, ran = getattr(loop.diffusion_loss, "__wrapped__", loop.diffusion_loss), []

    def loss_then_nan(*a: object, **kw: object) -> object:
        ran.append(len(ran) + 1)
        loss = real(*a, **kw)
        return loss * float("nan") if len(ran) >= step else loss

    loss_then_nan.__wrapped__ = real  # type: ignore[attr-defined]
    monkeypatch.setattr(loop, "diffusion_loss", loss_then_nan)
    return ran


def test_a_nan_loss_stops_training_at_most_loss_read_every_steps_later(
    tmp_path: Path, acme_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brandtune.errors import TrainingError
    from brandtune.training.loop import LOSS_READ_EVERY

    ran = _nan_from(monkeypatch, 3)
    with pytest.raises(TrainingError) as stopped:
        train(quick(tmp_path / "a", max_train_steps=2 * LOSS_READ_EVERY + 5))
    assert str(stopped.value).startswith("loss became nan at step 3; last good checkpoint: none. ")
    assert "\n" not in str(stopped.value)
    assert len(ran) == LOSS_READ_EVERY, "read (and stopped) at the first read after the NaN"

    # a checkpoint is written only after every loss before it was read and finite
    ran = _nan_from(monkeypatch, 3)
    cfg = quick(tmp_path / "b", max_train_steps=2 * LOSS_READ_EVERY, checkpointing_steps=2)
    with pytest.raises(TrainingError) as stopped:
        train(cfg)
    good = cfg.output_dir / "checkpoints" / "checkpoint-00000002"
    assert str(stopped.value).startswith(f"loss became nan at step 3; last good checkpoint: {good}. ")
    assert len(ran) == 4 and sorted(p.name for p in good.parent.iterdir()) == [good.name]


def test_compile_modes_compile_the_repeated_blocks_or_the_whole_model_in_place() -> None:
    """The plumbing only (what is compiled, in place); a compiled step on the CPU costs minutes of compile time and
    is not run here (docs/benchmarks.md)."""
    import torch

    from brandtune.models import load_components, resolve_base
    from brandtune.training.families import compile_denoiser

    def compiled(model: torch.nn.Module) -> set[str]:
        return {
            type(m).__name__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None
        }

    unet = load_components(resolve_base("builtin:tiny")).denoiser
    assert compile_denoiser(unet, "none") == [] and compiled(unet) == set()
    assert compile_denoiser(unet, "regional") == ["BasicTransformerBlock"], "diffusers' _repeated_blocks"
    assert compiled(unet) == {"BasicTransformerBlock"}
    assert not hasattr(torch.nn.Linear, "_repeated_blocks")
    stack = torch.nn.Sequential(
        torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]), torch.nn.ReLU()
    )
    assert compile_denoiser(stack, "regional") == ["Linear"], "without _repeated_blocks: every listed block"
    assert compiled(stack) == {"Linear"}
    assert compile_denoiser(stack, "full") == ["Sequential"] and "Sequential" in compiled(stack)
    whole = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert compile_denoiser(whole, "reduce-overhead") == ["Sequential"]
    assert whole._compiled_call_impl is not None, "the whole model, in place (CUDA graphs: torch's mode)"


def test_cuda_graphs_are_refused_without_a_cuda_gpu_or_with_several_shapes(
    tmp_path: Path, acme_dataset: Path
) -> None:
    import torch

    from brandtune.errors import TrainingError
    from brandtune.training.families import check_cuda_graphs

    for mode in ("none", "regional", "full"):
        check_cuda_graphs(mode, torch.device("cpu"), 3)  # nothing to check
    check_cuda_graphs("reduce-overhead", torch.device("cuda"), 1)
    check_cuda_graphs("reduce-overhead", torch.device("cuda"))  # shapes not known yet
    with pytest.raises(TrainingError, match=r"has 3 \(aspect buckets.*set aspect_buckets: false"):
        check_cuda_graphs("reduce-overhead", torch.device("cuda"), 3)
    # a real training on this CPU: refused in one line before anything loads or is written
    cfg = quick(tmp_path / "run", compile="reduce-overhead")
    with pytest.raises(TrainingError) as refused:
        train(cfg)
    assert str(refused.value).startswith("compile: reduce-overhead records CUDA graphs and needs a CUDA GPU")
    assert "\n" not in str(refused.value)
    assert not (cfg.output_dir / "checkpoints").exists() and not (cfg.output_dir / "adapter").exists()
