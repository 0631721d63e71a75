"""Training on the built-in tiny models: adapters, formats, cache, resume, DDP, MLflow, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brandtune.errors import ConfigError, ModelResolutionError, TrainingError
from brandtune.training import TrainConfig
from brandtune.training.run import train

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

QUICK = {
    "brand": "acme",
    "checkpointing_steps": 0,
    "validation_inference_steps": 2,
    "num_threads": 2,
    "train_batch_size": 4,
}


def quick(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(**{**QUICK, "output_dir": tmp_path / "run", **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(
        **{
            **QUICK,
            "output_dir": out / "run",
            "max_train_steps": 12,
            "learning_rate": 1e-2,
            "export_kohya": True,
        }
    )
    return train(cfg)


def _generate(pipe, prompt: str = "a photo of acme bottle on a beach", seed: int = 0) -> np.ndarray:
    import torch

    image = pipe(
        prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), output_type="np"
    )
    return image.images[0]


def test_adapter_changes_generation_and_loads_in_plain_diffusers(trained, tmp_path: Path) -> None:
    from brandtune.models import load_base_pipeline, resolve_base

    adapter = trained.adapter_dir
    meta = json.loads((adapter / "brandtune.json").read_text())
    for key in (
        "base_model",
        "base_revision",
        "trigger",
        "rank",
        "alpha",
        "target_modules",
        "resolution",
        "dataset_fingerprint",
        "config_hash",
        "brandtune_version",
        "git_sha",
    ):
        assert key in meta, key
    assert meta["base_model"] == "builtin:tiny" and meta["trigger"] == "acme"
    from safetensors import safe_open

    with safe_open(adapter / "pytorch_lora_weights.safetensors", framework="pt") as f:
        assert f.metadata()["brandtune.dataset_fingerprint"] == meta["dataset_fingerprint"]

    pipe = load_base_pipeline(resolve_base("builtin:tiny"))
    before = _generate(pipe)
    pipe.load_lora_weights(adapter)
    after = _generate(pipe)
    assert np.abs(after - before).max() > 1e-3

    # A process that never imports brandtune loads the adapter with plain diffusers.
    script = (
        "import sys, numpy as np, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)\n"
        "pipe.load_lora_weights(sys.argv[2])\n"
        "img = pipe('a photo of acme bottle on a beach', num_inference_steps=3,"
        " generator=torch.Generator().manual_seed(0), output_type='np').images[0]\n"
        "assert 'brandtune' not in sys.modules\n"
        "np.save(sys.argv[3], img)\n"
    )
    out = tmp_path / "plain.npy"
    base_dir = resolve_base("builtin:tiny").path
    subprocess.run(
        [sys.executable, "-c", script, str(base_dir), str(adapter), str(out)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
    )
    np.testing.assert_allclose(np.load(out), after, atol=1e-5)


def test_kohya_export_gives_the_same_images(trained) -> None:
    from brandtune.models import load_base_pipeline, resolve_base

    base = resolve_base("builtin:tiny")
    diffusers_pipe = load_base_pipeline(base)
    diffusers_pipe.load_lora_weights(trained.adapter_dir)
    kohya_pipe = load_base_pipeline(base)
    kohya_pipe.load_lora_weights(trained.adapter_dir, weight_name="kohya_lora.safetensors")
    np.testing.assert_allclose(_generate(kohya_pipe), _generate(diffusers_pipe), atol=1e-5)


def test_mlflow_holds_params_metrics_config_images_and_dataset(trained) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(trained.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["rank"] == "8" and run.data.params["max_train_steps"] == "12"
    for tag in (
        "brandtune.base_model",
        "brandtune.dataset_fingerprint",
        "brandtune.config_hash",
        "brandtune.git_sha",
        "brandtune.version",
    ):
        assert run.data.tags[tag]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 13))
    assert {"lr", "step_time_s", "images_per_s"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "adapter", "images"} <= artifacts
    config = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="config/train_config.json"
            )
        ).read_text()
    )
    assert config["rank"] == 8 and config["dataset"] == run.data.tags["brandtune.dataset_fingerprint"]
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == run.data.tags["brandtune.dataset_fingerprint"]


def test_sdxl_architecture_trains(tmp_path: Path) -> None:
    from brandtune.models import load_base_pipeline, resolve_base

    result = train(quick(tmp_path, base_model="builtin:tiny-sdxl", max_train_steps=3))
    meta = json.loads((result.adapter_dir / "brandtune.json").read_text())
    assert meta["base_family"] == "sdxl"
    pipe = load_base_pipeline(resolve_base("builtin:tiny-sdxl"))
    pipe.load_lora_weights(result.adapter_dir)
    assert _generate(pipe).shape[-1] == 3


@pytest.mark.parametrize("base", ["builtin:tiny", "builtin:tiny-sdxl"])
def test_bf16_mixed_precision_trains_and_validates(tmp_path: Path, base: str) -> None:
    """The GPU setting end to end on the CPU: bf16 base weights, fp32 LoRA weights and VAE encode, validation
    images drawn by a bf16 pipeline under autocast."""
    from accelerate.state import AcceleratorState
    from PIL import Image

    # accelerate keeps one state per process (training runs one per process); this test changes its precision
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        result = train(quick(tmp_path, base_model=base, mixed_precision="bf16", max_train_steps=2))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert np.isfinite(result.final_loss)
    grid = np.asarray(Image.open(result.run_dir / "validation" / "step-000002.png"))
    assert grid.std() > 0, "validation images are drawn, not blank"


def test_prior_preservation_generates_class_images_once(tmp_path: Path) -> None:
    from brandtune.settings import Settings

    cfg = {"prior_preservation": True, "num_class_images": 3, "max_train_steps": 2}
    first = train(quick(tmp_path / "a", **cfg))
    folders = list((Settings.from_env().cache_dir / "class_images").iterdir())
    assert len(folders) == 1, "one cached set of class images for this base, prompt, count and resolution"
    files = sorted(folders[0].glob("*.png"))
    assert len(files) == 3 and (folders[0] / "encoded.safetensors").is_file()
    stamps = [f.stat().st_mtime_ns for f in files]
    second = train(quick(tmp_path / "b", **cfg))
    assert [f.stat().st_mtime_ns for f in sorted(folders[0].glob("*.png"))] == stamps, "reused, not redrawn"
    assert np.isfinite(first.final_loss) and second.final_loss == first.final_loss


def test_text_encoder_lora_trains_and_loads_in_plain_diffusers(tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from brandtune.models import resolve_base

    result = train(quick(tmp_path, train_text_encoder=True, max_train_steps=3, learning_rate=1e-2))
    keys = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_base("builtin:tiny").path)
    ids = pipe.tokenizer(["a photo of acme bottle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(result.adapter_dir)
        after = pipe.text_encoder(ids)[0]
    assert not torch.allclose(before, after), "the text-encoder LoRA changes what the text encoder says"


def test_lora_on_every_layer_kind_loads_whole_in_plain_diffusers(tmp_path: Path) -> None:
    """Attention, feed-forward, projections and resnet convolutions in one adapter: plain diffusers loads every one
    of them (a file mixing diffusers' attention-only key layout with peft's made it drop the attention layers)."""
    import warnings

    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    from brandtune.models import resolve_base
    from brandtune.training.config import DEFAULT_UNET_TARGETS, NON_ATTENTION_UNET_TARGETS

    targets = [*DEFAULT_UNET_TARGETS, *NON_ATTENTION_UNET_TARGETS]
    result = train(quick(tmp_path, target_modules=targets, max_train_steps=2))
    saved = load_file(result.adapter_dir / "pytorch_lora_weights.safetensors")
    layers = {k.removeprefix("unet.").rsplit(".lora", 1)[0] for k in saved}
    assert any(n.endswith("attn1.to_q") for n in layers) and any(
        n.endswith("resnets.0.conv1") for n in layers
    )
    assert any(n.endswith("ff.net.2") for n in layers) and any(n.endswith("proj_in") for n in layers)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_base("builtin:tiny").path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when it skips layers of the file
        pipe.load_lora_weights(result.adapter_dir)
    loaded = {name for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer)}
    assert loaded == layers


def test_latent_cache_reused_and_invalidated(tmp_path: Path, acme_dataset: Path) -> None:
    from PIL import Image

    from brandtune.config import load_brand
    from brandtune.ingest import ingest

    first = train(quick(tmp_path / "a", max_train_steps=1, resolution=32))
    second = train(quick(tmp_path / "b", max_train_steps=1, resolution=32))
    assert not first.cache_hit and second.cache_hit
    # Change one image: a new dataset fingerprint, so the cache is not reused.
    photos = tmp_path / "photos"
    src = Path(__file__).resolve().parent.parent / "data" / "brands" / "acme" / "photos"
    shutil.copytree(src, photos)
    victim = sorted(photos.glob("*.png"))[0]
    arr = np.asarray(Image.open(victim).convert("RGB")).copy()
    arr[:20, :20] = 0
    Image.fromarray(arr).save(victim)
    changed = ingest(load_brand("acme"), photos, progress=False)
    third = train(quick(tmp_path / "c", max_train_steps=1, resolution=32, dataset=changed.fingerprint))
    assert not third.cache_hit
    # Back to the original dataset: its cache is still there.
    fourth = train(quick(tmp_path / "d", max_train_steps=1, resolution=32, dataset=acme_dataset.name))
    assert fourth.cache_hit


def _write_config(path: Path, cfg: TrainConfig) -> Path:
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path


def _tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "pytorch_lora_weights.safetensors")


def test_kill_and_resume_gives_identical_adapter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    common = {
        "max_train_steps": 16,
        "checkpointing_steps": 4,
        "dropout": 0.1,
        "random_flip": True,
        "learning_rate": 5e-3,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
    }
    reference = train(quick(tmp_path / "ref", **common))
    interrupted = quick(tmp_path / "killed", **common)
    cfg_file = _write_config(tmp_path / "cfg.json", interrupted)
    cmd = [sys.executable, "-m", "brandtune.training", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = interrupted.output_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts / "checkpoint-00000008" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (interrupted.output_dir / "adapter").exists()
    # A half-written newer checkpoint (no valid marker) must be skipped.
    broken = ckpts / "checkpoint-00000099"
    broken.mkdir(exist_ok=True)
    (broken / "COMPLETE").write_text("{not json")
    # the killed process held the folder's lock (no launcher here): the resume takes the stale lock over
    import logging

    with caplog.at_level(logging.INFO, logger="brandtune.training"):
        resumed = train(interrupted.model_copy(update={"resume": "latest"}))
    assert any("stale lock" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert resumed.resumed_from >= 8
    ref, got = _tensors(reference.adapter_dir), _tensors(resumed.adapter_dir)
    assert ref.keys() == got.keys()
    for key in ref:
        assert (ref[key] == got[key]).all(), key
    import mlflow

    # The resumed process continued the killed process's MLflow run.
    run = mlflow.MlflowClient().get_run(resumed.mlflow_run_id)
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")][-1] == 16


def test_two_process_accelerate_launch(tmp_path: Path) -> None:
    from brandtune.training.launch import launch

    lines: list[str] = []
    result = launch(quick(tmp_path, max_train_steps=3), num_processes=2, on_line=lines.append)
    adapter = Path(result["adapter_dir"])
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert any("adapter written" in line for line in lines)
    assert sum("adapter written" in line for line in lines) == 1  # main process only
    assert sum("brandtune.training: adapter:" in line for line in lines) == 2  # but both ranks trained


def test_the_base_recommends_what_a_config_leaves_empty(trained) -> None:
    """builtin:tiny's shipped recommendation fills the empty fields (warm-up scaled to the steps); explicit values
    win; the identity is the resolved config's, and MLflow records the resolved values."""
    import mlflow

    from brandtune.models import resolve_base
    from brandtune.settings import Settings
    from brandtune.training.config import DEFAULT_UNET_TARGETS, NON_ATTENTION_UNET_TARGETS
    from brandtune.training.plan import resolve_job

    settings = Settings.from_env()
    rec = resolve_base("builtin:tiny").training_defaults
    assert (rec.learning_rate, rec.lr_scheduler, rec.lr_warmup_steps) == (5e-3, "cosine", 20)
    assert (rec.max_train_steps, rec.train_batch_size) == (300, 8)
    plain = resolve_job(TrainConfig(brand="acme"), settings)
    assert plain.config.target_modules == NON_ATTENTION_UNET_TARGETS
    assert (plain.config.learning_rate, plain.config.lr_scheduler) == (5e-3, "cosine")
    assert (plain.config.max_train_steps, plain.config.train_batch_size, plain.config.lr_warmup_steps) == (
        300,
        8,
        20,
    )
    same = resolve_job(TrainConfig(brand="acme", learning_rate=5e-3, max_train_steps=300), settings)
    assert same.run_hash == plain.run_hash, (
        "an explicit value equal to the recommendation is the same training"
    )
    short = resolve_job(TrainConfig(brand="acme", max_train_steps=30), settings)
    assert short.config.lr_warmup_steps == 2, "the recommended warm-up keeps its share of the steps"
    mine = resolve_job(
        TrainConfig(brand="acme", learning_rate=1e-4, lr_scheduler="constant", target_modules=["to_q"]),
        settings,
    )
    assert (mine.config.learning_rate, mine.config.lr_scheduler, mine.config.target_modules) == (
        1e-4,
        "constant",
        ["to_q"],
    )
    assert mine.run_hash != plain.run_hash
    sdxl = resolve_job(TrainConfig(brand="acme", base_model="builtin:tiny-sdxl"), settings)
    assert sdxl.config.target_modules == DEFAULT_UNET_TARGETS and sdxl.config.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        resolve_job(TrainConfig(brand="acme", lr_warmup_steps=300), settings)
    # the trained fixture set lr 1e-2 and 12 steps, and left targets and schedule to the base
    params = mlflow.MlflowClient().get_run(trained.mlflow_run_id).data.params
    assert (params["learning_rate"], params["lr_scheduler"], params["max_train_steps"]) == (
        "0.01",
        "cosine",
        "12",
    )
    assert params["target_modules"] == str(NON_ATTENTION_UNET_TARGETS) and params["lr_warmup_steps"] == "0"
    assert params["config_hash"] == trained.config_hash


def test_a_new_training_never_continues_an_earlier_one(tmp_path: Path) -> None:
    """The same config twice: two run folders, two MLflow runs; the first run's folder, checkpoints, metrics and
    tags stay as they were."""
    import mlflow

    cfg = TrainConfig(**{**QUICK, "max_train_steps": 3, "checkpointing_steps": 1, "seed": 11})
    first = train(cfg)
    client = mlflow.MlflowClient()
    before = client.get_run(first.mlflow_run_id)
    losses = client.get_metric_history(first.mlflow_run_id, "loss")
    checkpoints = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir())
    second = train(cfg)
    assert second.run_dir != first.run_dir and second.mlflow_run_id != first.mlflow_run_id
    assert second.run_dir.parent == first.run_dir.parent and second.config_hash == first.config_hash
    assert second.resumed_from == 0
    after = client.get_run(first.mlflow_run_id)
    assert after.data.tags == before.data.tags and after.info.end_time == before.info.end_time
    assert len(client.get_metric_history(first.mlflow_run_id, "loss")) == len(losses) == 3
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == checkpoints


def test_a_training_into_a_folder_in_use_is_refused_at_once(tmp_path: Path) -> None:
    from brandtune.training.launch import launch
    from brandtune.training.lock import LOCK_FILE, RunDirLockedError, acquire

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from brandtune.training.lock import "
         "acquire; acquire(Path(sys.argv[1]), 'the-holder'); print('held', flush=True); time.sleep(120)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLockedError, match=rf"pid {holder.pid} .*invocation the-holder"):
            train(quick(tmp_path, max_train_steps=1))
        lines: list[str] = []
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid}"):
            launch(quick(tmp_path, max_train_steps=1), on_line=lines.append)
        assert not lines, "refused before a child process started"
        assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists()  # killed: its lock is stale now, and the next one takes it
    acquire(tmp_path / "run").release()


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        ({"dataset": "ffffffff"}, Exception, "does not exist"),
        ({"base_model": "builtin:nope"}, ModelResolutionError, "Built-in models"),
        ({"resolution": 63}, TrainingError, "not divisible by"),
        ({"target_modules": ["to_qq"]}, TrainingError, "matches no layer"),
        ({"mixed_precision": "fp16"}, TrainingError, "needs a CUDA GPU"),
    ],
)
def test_bad_input_fails_before_compute(tmp_path: Path, overrides: dict, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        train(quick(tmp_path, max_train_steps=1, **overrides))
    assert not (tmp_path / "run" / "adapter").exists()


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TrainConfig(brand="acme", rank=0)
    with pytest.raises(ValidationError, match="lr_warmup_steps"):
        TrainConfig(brand="acme", max_train_steps=5, lr_warmup_steps=5)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainConfig(brand="acme", rnak=4)
    assert issubclass(ConfigError, ValueError)


def test_out_of_disk_is_checked_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import brandtune.training.plan as plan

    monkeypatch.setattr(plan.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(TrainingError, match="not enough disk"):
        train(quick(tmp_path, max_train_steps=1))


def test_nan_loss_stops_with_step_named(tmp_path: Path, trained) -> None:
    from safetensors.torch import load_file, save_file

    from brandtune.settings import Settings

    caches = sorted((Settings.from_env().cache_dir / "latents").glob("*.safetensors"))
    assert caches
    saved = {p: p.read_bytes() for p in caches}
    try:
        for path in caches:
            tensors = load_file(path)
            tensors["latent_mean"][:] = float("nan")
            save_file(tensors, path)
        with pytest.raises(TrainingError, match=r"at step 1; last good checkpoint: none"):
            train(quick(tmp_path, max_train_steps=2))
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
