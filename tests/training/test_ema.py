"""brandtune.training.ema: the moving average's update, a saved adapter that is the average (not the last step's
weights) while the training itself is unchanged, and a killed-and-resumed EMA training that is bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from training_helpers import kill_after_checkpoint, quick

from brandtune.training import TrainConfig, train
from brandtune.training.ema import AdapterEMA, decay_at

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

DECAY = 0.9
STEPS = 6
#: A checkpoint after every step but the last, all kept: the raw weights and the average along the way.
EVERY_STEP = {
    "max_train_steps": STEPS,
    "checkpointing_steps": 1,
    "checkpoints_total_limit": STEPS,
    "dropout": 0.1,
}


def test_update_is_the_warmed_up_moving_average_and_a_swap_restores_the_weights() -> None:
    import torch

    assert [decay_at(0.99, n) for n in (1, 2, 90, 10_000)] == [2 / 11, 3 / 12, 91 / 100, 0.99]
    w = {"0/a": torch.tensor([1.0, -2.0]), "1/b": torch.tensor([[0.5]])}
    start = {k: v.clone() for k, v in w.items()}
    ema = AdapterEMA(0.5, w)
    expected = {k: v.clone() for k, v in start.items()}
    for step, new in enumerate(
        [{"0/a": [3.0, 0.0], "1/b": [[1.5]]}, {"0/a": [-1.0, 4.0], "1/b": [[0.0]]}], 1
    ):
        for k, v in new.items():
            w[k].copy_(torch.tensor(v))  # the optimizer updates the weights in place
        ema.update(step)
        d = min(0.5, (1 + step) / (10 + step))
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in w}
    for k in w:
        torch.testing.assert_close(ema.shadow[k], expected[k], rtol=0, atol=1e-7)
    raw = {k: v.clone() for k, v in w.items()}
    with ema.swapped_in():
        assert all(torch.equal(w[k], ema.shadow[k]) for k in w)
    assert all(torch.equal(w[k], raw[k]) for k in w)
    assert ema.per_module(2) == [{"a": ema.shadow["0/a"]}, {"b": ema.shadow["1/b"]}]
    ema.load(start)
    assert all(torch.equal(ema.shadow[k], start[k]) for k in w)
    with pytest.raises(ValueError, match="do not match the trained weights"):
        ema.load({"0/a": start["0/a"]})


def test_ema_off_is_one_spelling_and_keeps_the_config_hash() -> None:
    from brandtune.config.train import TrainingDefaults

    def ident(**fields: Any) -> dict:
        return TrainConfig(brand="acme", **fields).with_base_defaults(TrainingDefaults()).identity()

    assert TrainConfig(brand="acme", ema_decay=0).ema_decay is None
    assert "ema_decay" not in ident() and ident(ema_decay=0) == ident()  # hashes from before EMA stay
    assert ident(ema_decay=0.99)["ema_decay"] == 0.99
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(brand="acme", ema_decay=1.0)


def _adapter(result: Any) -> dict:
    from safetensors.torch import load_file

    return load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")


def _checkpoint(result: Any, step: int, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(result.run_dir / "checkpoints" / f"checkpoint-{step:08d}" / name)


def _as_adapter_keys(tensors: dict) -> dict:
    """Checkpoint keys (``0/<peft parameter name>``, the denoiser) as the adapter file names them."""
    return {"unet." + k.removeprefix("0/").replace(".default.", "."): v for k, v in tensors.items()}


@pytest.fixture(scope="module")
def with_ema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train(quick(tmp_path_factory.mktemp("ema"), **EVERY_STEP, ema_decay=DECAY))


def test_adapter_is_the_average_and_the_training_is_unchanged(with_ema: Any, tmp_path: Path) -> None:
    import json

    import torch

    plain = train(quick(tmp_path, **EVERY_STEP))
    for step in range(1, STEPS):  # the same weights at every step: the average does not touch the training
        got, ref = (_checkpoint(r, step, "trainable.safetensors") for r in (with_ema, plain))
        assert all(torch.equal(got[k], ref[k]) for k in ref), step
    assert not (plain.run_dir / "checkpoints" / "checkpoint-00000001" / "ema.safetensors").exists()
    # the checkpoints' averages follow the update from the weights of each step ...
    for step in range(2, STEPS):
        before, weights = (
            _checkpoint(with_ema, step - 1, "ema.safetensors"),
            _checkpoint(with_ema, step, "trainable.safetensors"),
        )
        d = decay_at(DECAY, step)
        for k, avg in _checkpoint(with_ema, step, "ema.safetensors").items():
            torch.testing.assert_close(avg, d * before[k] + (1 - d) * weights[k], rtol=0, atol=1e-7)
    # ... and the adapter is the average after the last step, whose weights are the plain training's adapter
    last = _as_adapter_keys(_checkpoint(with_ema, STEPS - 1, "ema.safetensors"))
    raw, saved = _adapter(plain), _adapter(with_ema)
    assert saved.keys() == raw.keys() == last.keys()
    d = decay_at(DECAY, STEPS)
    for k in raw:
        torch.testing.assert_close(saved[k], d * last[k] + (1 - d) * raw[k], rtol=0, atol=1e-7)
    lora_b = [k for k in raw if "lora_B" in k]  # zero at the start: the average lags the weights
    lag = [float((saved[k] - raw[k]).norm() / raw[k].norm()) for k in lora_b]
    assert min(lag) > 0.01, lag
    meta = [json.loads((r.adapter_dir / "brandtune.json").read_text()) for r in (with_ema, plain)]
    assert [m["ema_decay"] for m in meta] == [DECAY, None]


def test_kill_and_resume_with_ema_gives_the_identical_adapter(with_ema: Any, tmp_path: Path) -> None:
    import torch

    interrupted = quick(tmp_path, **{**EVERY_STEP, "checkpointing_steps": 2}, ema_decay=DECAY)
    kill_after_checkpoint(interrupted, tmp_path / "cfg.json", step=4)
    resumed = train(interrupted.model_copy(update={"resume": "latest"}))
    assert resumed.resumed_from == 4
    ref, got = _adapter(with_ema), _adapter(resumed)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
