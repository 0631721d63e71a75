"""brandtune.training.run end to end on the built-in tiny models: an adapter that plain diffusers loads, the kohya
export, what MLflow holds, SDXL, bf16, prior preservation, the base's recommendations and a NaN loss.

The tests that share the module-scoped ``trained`` adapter stay in this one file: it is trained once, and its MLflow
run lives in this module's store (tests/conftest.py ``mlflow_store``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from training_helpers import QUICK, quick

from brandtune.errors import ConfigError, TrainingError
from brandtune.training import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads", "acme_dataset")]


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


@pytest.mark.parametrize("base", ["builtin:tiny", "builtin:tiny-sdxl", "builtin:tiny-sd3"])
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
    assert len(files) == 3 and len(list(folders[0].glob("encoded-*.safetensors"))) == 1
    stamps = [f.stat().st_mtime_ns for f in files]
    second = train(quick(tmp_path / "b", **cfg))
    assert [f.stat().st_mtime_ns for f in sorted(folders[0].glob("*.png"))] == stamps, "reused, not redrawn"
    assert np.isfinite(first.final_loss) and second.final_loss == first.final_loss


def test_the_base_recommends_what_a_config_leaves_empty(trained) -> None:
    """builtin:tiny's shipped recommendation fills the empty fields (warm-up scaled to the steps); explicit values
    win; the identity is the resolved config's, and MLflow records the resolved values."""
    import mlflow

    from brandtune.config.train import DEFAULT_UNET_TARGETS, NON_ATTENTION_UNET_TARGETS
    from brandtune.models import resolve_base
    from brandtune.settings import Settings
    from brandtune.training.plan import resolve_job

    settings = Settings.from_env()
    rec = resolve_base("builtin:tiny").training_defaults
    assert (rec.learning_rate, rec.lr_scheduler, rec.lr_warmup_steps) == (8e-3, "cosine", 20)
    assert (rec.max_train_steps, rec.train_batch_size) == (300, 8)
    plain = resolve_job(TrainConfig(brand="acme"), settings)
    assert plain.config.target_modules == NON_ATTENTION_UNET_TARGETS
    assert (plain.config.learning_rate, plain.config.lr_scheduler) == (8e-3, "cosine")
    assert (plain.config.max_train_steps, plain.config.train_batch_size, plain.config.lr_warmup_steps) == (
        300,
        8,
        20,
    )
    same = resolve_job(TrainConfig(brand="acme", learning_rate=8e-3, max_train_steps=300), settings)
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


def test_nan_loss_stops_with_step_named(tmp_path: Path, trained) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from brandtune.settings import Settings

    caches = sorted((Settings.from_env().cache_dir / "latents").glob("*.safetensors"))
    assert caches
    saved = {p: p.read_bytes() for p in caches}
    try:
        for path in caches:
            tensors = load_file(path)
            with safe_open(
                path, "pt"
            ) as handle:  # the cache's version and layout: kept, so the cache is read
                metadata = handle.metadata()
            for name, tensor in tensors.items():
                if name.rsplit("/", 1)[-1] == "latent_mean":  # every aspect bucket's ("<bucket>/latent_mean")
                    tensor[:] = float("nan")
            save_file(tensors, path, metadata=metadata)
        with pytest.raises(TrainingError, match=r"at step 1; last good checkpoint: none"):
            train(quick(tmp_path, max_train_steps=2))
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
