"""The device/dtype resolver of generation and evaluation (brandtune.config.device).

This machine has no CUDA GPU, so the CUDA branches are exercised by patching ``torch.cuda.is_available`` and
``torch.cuda.is_bf16_supported`` only; every other line runs as it does for a user."""

from __future__ import annotations

import pytest

from brandtune.config import EvalConfig, GenerateConfig, Placement, resolve_placement
from brandtune.errors import ConfigError


def _gpu(monkeypatch: pytest.MonkeyPatch, *, present: bool, bf16: bool = True) -> list[dict]:
    import torch

    calls: list[dict] = []

    def bf16_supported(**kwargs: object) -> bool:
        calls.append(kwargs)
        return bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    return calls


@pytest.mark.parametrize(
    ("present", "bf16", "device", "dtype", "expected"),
    [
        (False, True, "auto", "auto", ("cpu", "float32")),
        (False, True, "cpu", "bfloat16", ("cpu", "bfloat16")),
        (True, True, "auto", "auto", ("cuda", "bfloat16")),
        (True, False, "auto", "auto", ("cuda", "float16")),
        (True, True, "cuda", "float32", ("cuda", "float32")),
        (True, True, "cpu", "auto", ("cpu", "float32")),
        (True, False, "cuda", "float16", ("cuda", "float16")),
    ],
)
def test_auto_picks_the_gpu_and_its_best_half_dtype(
    monkeypatch: pytest.MonkeyPatch, present: bool, bf16: bool, device: str, dtype: str, expected: tuple
) -> None:
    calls = _gpu(monkeypatch, present=present, bf16=bf16)
    placement = resolve_placement(device, dtype)
    assert (placement.device, placement.dtype) == expected
    # native bf16 only: emulated bf16 on an older GPU is slower than fp16
    assert all(c == {"including_emulation": False} for c in calls)
    assert placement.legacy == (expected == ("cpu", "float32"))


def test_cuda_without_a_gpu_is_one_line_that_says_what_to_do() -> None:
    import torch

    assert not torch.cuda.is_available()  # this machine: the real check, nothing patched
    assert resolve_placement() == Placement("cpu", "float32")
    with pytest.raises(ConfigError) as err:
        resolve_placement("cuda", "auto")
    text = str(err.value)
    assert len(text.splitlines()) == 1
    assert "device 'cuda': no CUDA GPU is visible here" in text and "use 'auto' or 'cpu'" in text


def test_bf16_on_a_gpu_without_it_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, present=True, bf16=False)
    with pytest.raises(ConfigError, match=r"dtype 'bfloat16': this GPU has no native bf16.*use 'float16'"):
        resolve_placement("cuda", "bfloat16")
    with pytest.raises(ConfigError, match="'mps' is not a device"):
        resolve_placement("mps", "auto")
    with pytest.raises(ConfigError, match="'half' is not a weight dtype"):
        resolve_placement("auto", "half")


def test_generate_and_eval_configs_share_the_fields() -> None:
    from pydantic import ValidationError

    for model in (GenerateConfig, EvalConfig):
        for name in ("device", "dtype"):
            info = model.model_fields[name]
            assert info.default == "auto" and info.description
        assert model.model_fields["device"].description == GenerateConfig.model_fields["device"].description
    with pytest.raises(ValidationError, match="device"):
        GenerateConfig(brand="acme", prompt="a photo", device="gpu")
    assert Placement("cuda", "bfloat16").torch_dtype().is_floating_point
    assert str(Placement("cuda", "float16")) == "cuda/float16"
