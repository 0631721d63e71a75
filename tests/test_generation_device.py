"""Generation on a device and dtype (brandtune.generation with brandtune.config.device): the manifest records
the resolved pair, a resume with another is refused, manifests written before the record read as cpu/float32, and
``device: cuda`` on a machine without a CUDA GPU stops before anything is loaded or written.

No GPU exists here: the dtype path runs on the CPU in bfloat16 with the base model of builtin:tiny (no adapter
to train, so each test takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brandtune.config import GenerateConfig, SamplerConfig
from brandtune.errors import ConfigError, GenerationError
from brandtune.generation import generate, reproduce

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

#: Two steps of a tiny model: enough for bf16 weights to change the pixels.
STEPS = SamplerConfig(num_inference_steps=2)


def _job(out: Path, **overrides: object) -> GenerateConfig:
    base = {
        "brand": "acme",
        "prompt": "a photo of {trigger} {subject}",
        "settings": ["beach"],
        "variations": 1,
        "model": "base",
        "sampler": STEPS,
        "output_dir": out,
    }
    return GenerateConfig(**{**base, **overrides})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cuda_without_a_gpu_stops_before_anything_is_loaded_or_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        generate(_job(out, device="cuda"), progress=False)
    assert len(str(err.value).splitlines()) == 1 and "no CUDA GPU is visible" in str(err.value)
    assert not out.exists()


def test_the_manifest_records_device_and_dtype_and_a_resume_with_another_is_refused(tmp_path: Path) -> None:
    half = generate(_job(tmp_path / "bf16", dtype="bfloat16"), progress=False)
    manifest = json.loads(half.manifest.read_text())
    assert (manifest["model"]["device"], manifest["model"]["dtype"]) == ("cpu", "bfloat16")
    assert all((e["device"], e["dtype"]) == ("cpu", "bfloat16") for e in manifest["images"])
    full = generate(_job(tmp_path / "fp32"), progress=False)  # auto on this machine: cpu/float32
    assert json.loads(full.manifest.read_text())["model"]["dtype"] == "float32"
    [file] = [e["file"] for e in manifest["images"]]
    a = np.asarray(Image.open(half.output_dir / file), dtype=np.int16)
    b = np.asarray(Image.open(full.output_dir / file), dtype=np.int16)
    assert np.abs(a - b).max() > 0  # the dtype is applied: bf16 weights give other pixels from the same noise
    # the bf16 folder resumed in float32: one line naming both, nothing written
    before = _files(half.output_dir)
    with pytest.raises(GenerationError) as err:
        generate(_job(tmp_path / "bf16"), progress=False)
    text = str(err.value)
    assert len(text.splitlines()) == 1
    assert (
        "holds images made with dtype 'bfloat16', but this job has 'float32'" in text
        and "--overwrite" in text
    )
    assert _files(half.output_dir) == before
    again = generate(_job(tmp_path / "bf16", dtype="bfloat16"), progress=False)
    assert (again.generated, again.skipped) == (0, 1)
    # --reproduce samples in the recorded dtype: the same pixels
    [copy] = reproduce(half.manifest, tmp_path / "copy")
    assert copy.read_bytes() == (half.output_dir / file).read_bytes()


def test_a_manifest_written_before_the_record_reads_as_cpu_float32(tmp_path: Path) -> None:
    first = generate(_job(tmp_path / "old"), progress=False)
    data = json.loads(first.manifest.read_text())
    for part in (data["model"], data["job"], *data["images"]):
        del part["device"], part["dtype"]
    first.manifest.write_text(json.dumps(data))
    resumed = generate(_job(tmp_path / "old"), progress=False)  # auto here: cpu/float32, the legacy pair
    assert (resumed.generated, resumed.skipped) == (0, 1)
    data = json.loads(first.manifest.read_text())
    for part in (data["model"], data["job"], *data["images"]):
        del part["device"], part["dtype"]
    first.manifest.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match="made with dtype 'float32', but this job has 'bfloat16'"):
        generate(_job(tmp_path / "old", dtype="bfloat16"), progress=False)
    [copy] = reproduce(first.manifest, tmp_path / "copy")
    assert copy.read_bytes() == (first.output_dir / data["images"][0]["file"]).read_bytes()


def test_reproducing_images_made_on_a_gpu_is_refused_here_in_one_line(tmp_path: Path) -> None:
    made = generate(_job(tmp_path / "out"), progress=False)
    data = json.loads(made.manifest.read_text())
    data["model"].update(device="cuda", dtype="bfloat16")
    made.manifest.write_text(json.dumps(data))
    with pytest.raises(GenerationError) as err:
        reproduce(made.manifest, tmp_path / "copy")
    text = str(err.value)
    assert len(text.splitlines()) == 1 and "were made on cuda in bfloat16" in text
    assert not (tmp_path / "copy").exists()
    data["model"]["device"] = "tpu"
    made.manifest.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match=r"model\.device: Input should be 'cpu' or 'cuda'"):
        reproduce(made.manifest, tmp_path / "copy")
