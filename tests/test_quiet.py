"""brandtune._quiet and load_adapter: the third-party noise is gone, every other warning of the same loggers stays.

Each message is provoked the way brandtune provokes it (loading builtin:tiny, loading a UNet-only adapter, casting a
model to a dtype, logging an adapter with the mlflow.diffusers flavor); a recording filter put first on the emitting
logger proves the library still emits it, so a reworded upstream message fails here instead of leaking back
unnoticed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brandtune import _quiet

REPO_ROOT = Path(__file__).resolve().parent.parent
NO_TE_KEYS = "No LoRA keys associated to CLIPTextModel found"


class Recorder(logging.Handler):
    """Collects the messages it handles; ``recorder.first_filter`` records a logger's records before its filters."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def first_filter(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return True

    def saw(self, text: str) -> bool:
        return any(text in m for m in self.messages)


@pytest.fixture
def watch() -> Iterator[Any]:
    """``watch(logger_name)`` -> (emitted, shown): every record logged on that logger, and those past its filters
    (``shown`` also gets the records of its child loggers, which propagate to its handlers)."""
    undo: list[tuple[logging.Logger, Recorder, Recorder]] = []

    def _watch(name: str) -> tuple[Recorder, Recorder]:
        target = logging.getLogger(name)
        emitted, shown = Recorder(), Recorder()
        target.filters.insert(0, emitted.first_filter)
        target.addHandler(shown)
        undo.append((target, emitted, shown))
        return emitted, shown

    yield _watch
    for target, emitted, shown in undo:
        target.removeFilter(emitted.first_filter)
        target.removeHandler(shown)


def test_install_is_idempotent_and_filters_only_its_messages() -> None:
    _quiet.install()
    _quiet.install()
    for quieted in _quiet.QUIETED:
        target = logging.getLogger(quieted.logger)
        ours = [f for f in target.filters if isinstance(f, _quiet.MessageFilter)]
        assert len([f for f in ours if f.pattern == quieted.pattern]) == 1, quieted.logger
        assert target.level == logging.NOTSET or target.level <= logging.WARNING  # no level raised
        assert quieted.reason


def test_torchvision_fallback_and_loading_bars_are_quiet_when_loading_a_pipeline() -> None:
    """A fresh process (transformers warns once per process): load builtin:tiny, then warn on the same logger;
    loading shows no progress bars."""
    code = (
        "import logging\n"
        "seen = []\n"
        "class Rec(logging.Filter):\n"
        "    def filter(self, record):\n"
        "        seen.append(record.getMessage()); return True\n"
        "logging.getLogger('transformers.utils.import_utils').addFilter(Rec())\n"
        "from brandtune.models import load_base_pipeline, resolve_base\n"
        "load_base_pipeline(resolve_base('builtin:tiny'))\n"
        "assert any('requires torchvision' in m for m in seen), seen  # transformers still emits it\n"
        "from transformers.utils import logging as hf_logging\n"
        "hf_logging.get_logger('transformers.utils.import_utils').warning('another import_utils warning')\n"
        "from brandtune.models import load_components\n"
        "load_components(resolve_base('builtin:tiny'))\n"
        "from diffusers.utils import logging as diffusers_logging\n"
        "print('bars after loading:', diffusers_logging.is_progress_bar_enabled())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "requires torchvision" not in done.stderr
    assert "another import_utils warning" in done.stderr
    # the loading progress bars are off while brandtune loads, and back on after
    assert "Loading pipeline components" not in done.stderr and "Loading weights" not in done.stderr, (
        done.stderr
    )
    assert "bars after loading: True" in done.stdout


def _tiny_adapter(dest: Path, text_encoder: bool) -> Path:
    """A LoRA on builtin:tiny with random (non-zero) B matrices, saved by brandtune's own save_adapter."""
    import torch

    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.training.lora import add_lora, save_adapter

    base = resolve_base("builtin:tiny")
    pipe = load_base_pipeline(base)
    add_lora(pipe.unet, 4, 4, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], "UNet")
    encoders = [pipe.text_encoder] if text_encoder else []
    for encoder in encoders:
        add_lora(encoder, 4, 4, 0.0, ["q_proj", "v_proj"], "text encoder")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in [pipe.unet, *encoders]:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    info = {"base_model": base.name, "base_revision": base.revision, "resolution": 64}
    return save_adapter(dest, base.family, pipe.unet, encoders, info)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "unet": _tiny_adapter(root / "unet", text_encoder=False),
        "text_encoder": _tiny_adapter(root / "te", text_encoder=True),
    }


def _images(pipe: Any) -> np.ndarray:
    import torch

    out = pipe(
        ["a photo of acme bottle", "a red cup"],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        output_type="np",
    )
    return out.images


def _has_lora(model: Any) -> bool:
    return any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("kind", ["unet", "text_encoder"])
def test_load_adapter_matches_load_lora_weights(kind: str, adapters: dict[str, Path], watch: Any) -> None:
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.models.loading import adapter_components, load_adapter

    base = resolve_base("builtin:tiny")
    folder = adapters[kind]
    assert adapter_components(folder / "pytorch_lora_weights.safetensors") == {"unet"} | (
        {"text_encoder"} if kind == "text_encoder" else set()
    )
    plain = load_base_pipeline(base)
    reference = _images(plain)
    _, shown = watch("diffusers")  # its handlers get every record of its child loggers
    plain.load_lora_weights(str(folder), adapter_name="brand")
    plain_warned = shown.saw(NO_TE_KEYS)
    helper = load_base_pipeline(base)
    shown.messages.clear()
    load_adapter(helper, folder, adapter_name="brand")
    assert not shown.saw(NO_TE_KEYS), shown.messages
    # plain diffusers warns for a UNet-only adapter (still visible: nothing filters diffusers), not for one with a
    # text-encoder part
    assert plain_warned == (kind == "unet")
    assert _has_lora(helper.unet)
    assert _has_lora(helper.text_encoder) == (kind == "text_encoder") == _has_lora(plain.text_encoder)
    assert helper.get_list_adapters() == plain.get_list_adapters()
    images = _images(helper)
    assert not np.allclose(images, reference, atol=1e-3)  # the adapter changes the images
    np.testing.assert_array_equal(images, _images(plain))


def test_load_adapter_names_a_missing_file(tmp_path: Path) -> None:
    from brandtune.errors import ConfigError
    from brandtune.models.loading import load_adapter

    with pytest.raises(ConfigError, match=r"has no pytorch_lora_weights\.safetensors"):
        load_adapter(object(), tmp_path)  # type: ignore[arg-type]


def test_torch_local_version_label_is_quiet_when_logging_an_adapter(
    adapters: dict[str, Path], mlflow_store: str, watch: Any, tmp_path: Path
) -> None:
    import torch
    from mlflow import MlflowClient

    from brandtune.registry._flavor import create_logged_model, log_diffusers_model

    mlc = MlflowClient(mlflow_store)
    # an artifact location of its own: MLflow's default is ./mlruns in the current folder
    run = mlc.create_run(mlc.create_experiment("quiet", artifact_location=(tmp_path / "artifacts").as_uri()))
    info = {"base_model": "builtin:tiny", "base_revision": "sha256:0", "resolution": 64}
    model_id = create_logged_model(mlc, run.info.run_id, info, "lora")
    emitted, shown = watch("mlflow.utils.requirements_utils")
    log_diffusers_model(model_id, run.info.run_id, adapters["unet"], info)
    if "+" in torch.__version__:  # a build with a local label (+cpu, +cu128): MLflow still says so
        assert emitted.saw("Found torch version"), emitted.messages
    assert not shown.saw("Found torch version"), shown.messages
    other = "Found numpy version (2.0.0+local) contains a local version label (+local)."
    logging.getLogger("mlflow.utils.requirements_utils").warning(other)
    assert shown.saw(other)


def test_empty_keep_in_float32_list_is_quiet_when_casting(watch: Any) -> None:
    import torch

    from brandtune.models import load_base_pipeline, resolve_base

    unet = load_base_pipeline(resolve_base("builtin:tiny")).unet
    emitted, shown = watch("diffusers.models.modeling_utils")
    unet.to("cpu", dtype=torch.float32)  # what training does with its frozen models
    assert emitted.saw("should be kept in float32: []"), emitted.messages
    assert not shown.saw("should be kept in float32"), shown.messages
    listed = (
        "There are modules in UNet2DConditionModel that should be kept in float32: ['proj_out']. Casting directly "
        "with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead."
    )
    logging.getLogger("diffusers.models.modeling_utils").warning(listed)
    assert shown.saw(listed)


def test_new_sqlite_store_set_up_is_quiet(watch: Any, tmp_path: Path) -> None:
    """brandtune's first use of a fresh tracking store (connect + a query) no longer announces its migrations."""
    from mlflow import MlflowClient

    from brandtune.tracking import connect

    emitted, shown = watch("mlflow.store.db.utils")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    connect(uri)
    MlflowClient(uri).search_experiments()
    assert emitted.saw("Creating initial MLflow database tables"), emitted.messages
    assert not shown.saw("Creating initial MLflow database tables")
    assert not shown.saw("Updating database tables")
    other = "Could not upgrade the database: disk full"
    logging.getLogger("mlflow.store.db.utils").warning(other)
    assert shown.saw(other)


def test_system_metrics_notices_are_quiet(watch: Any) -> None:
    _quiet.install()
    emitted, shown = watch("mlflow.system_metrics.system_metrics_monitor")
    log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    log.info("Started monitoring system metrics.")
    log.warning("Failed to log system metrics: connection refused")
    assert emitted.saw("Started monitoring") and not shown.saw("Started monitoring")
    assert shown.saw("Failed to log system metrics")
