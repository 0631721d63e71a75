"""brandtune.models.builtin: the built-in tiny models, built from their config, cached and built once however
many processes race; importing brandtune.models builds nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from model_helpers import PROMPT, _generator

from brandtune.models import BUILTIN_MODELS, ResolvedBase, load_components, resolve_base
from brandtune.models import builtin as builtin_module
from brandtune.settings import Settings

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


def test_import_is_light_and_touches_no_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = (
        "import sys, brandtune.models as m; "
        "heavy = [k for k in sys.modules if k.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'huggingface_hub', 'tokenizers')]; "
        "assert not heavy, heavy; assert m.BUILTIN_MODELS"
    )
    env = {**os.environ, "BRANDTUNE_HOME": str(home)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert not home.exists()


def test_builtin_tiny_resolves(tiny: ResolvedBase) -> None:
    assert list(BUILTIN_MODELS) == ["tiny", "tiny-sdxl", "tiny-flux", "tiny-flux-schnell", "tiny-sd3"]
    assert all(isinstance(desc, str) and desc for desc in BUILTIN_MODELS.values())
    assert tiny.ref == tiny.name == "builtin:tiny"
    assert tiny.family == "sd1"
    assert tiny.resolution == 64
    assert tiny.pipeline_class == "StableDiffusionPipeline"
    assert tiny.revision.startswith("sha256:") and len(tiny.revision) == 7 + 64
    assert tiny.path.parent == Settings.from_env().models_dir / "builtin"
    assert tiny.path.name.startswith("tiny-") and len(tiny.path.name) == len("tiny-") + 12
    assert (tiny.path / ".complete").is_file()
    assert not list(tiny.path.rglob("*.bin")), "weights must be safetensors only"
    assert tiny.provenance() == {
        "base_model": "builtin:tiny",
        "base_revision": tiny.revision,
        "base_family": "sd1",
    }


def test_builtin_is_cached(tiny: ResolvedBase, monkeypatch: pytest.MonkeyPatch) -> None:
    marker_mtime = (tiny.path / ".complete").stat().st_mtime_ns

    def no_rebuild(*args: object) -> None:
        raise AssertionError("builtin:tiny was rebuilt")

    monkeypatch.setattr(builtin_module, "_build", no_rebuild)
    again = resolve_base("builtin:tiny")
    assert again == tiny
    assert (tiny.path / ".complete").stat().st_mtime_ns == marker_mtime


def test_builtin_build_is_deterministic(
    tiny: ResolvedBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "other-home"))
    other = resolve_base("builtin:tiny")
    assert other.path != tiny.path
    assert other.path.name == tiny.path.name
    assert other.revision == tiny.revision
    assert not [p for p in other.path.parent.iterdir() if p.name != other.path.name], (
        "temp build dir left behind"
    )


def test_builtin_build_race_uses_the_winners_copy(
    tiny: ResolvedBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "race-home"))
    target = builtin_module.builtin_dir(builtin_module.builtin_spec("builtin:tiny"))

    def build_but_lose_the_race(spec: object, dest: Path) -> None:
        shutil.copytree(tiny.path, target)  # another process finishes first, .complete included
        (dest / "model_index.json").write_text("{}")  # this process's copy, which must be dropped

    monkeypatch.setattr(builtin_module, "_build", build_but_lose_the_race)
    assert resolve_base("builtin:tiny").path == target
    assert (target / "model_index.json").read_text() == (tiny.path / "model_index.json").read_text()
    assert [p.name for p in target.parent.iterdir()] == [target.name], "the loser's temp dir was left behind"


def test_builtin_tiny_sdxl_generates(tiny_sdxl: ResolvedBase) -> None:
    from diffusers import StableDiffusionXLPipeline

    assert tiny_sdxl.family == "sdxl"
    assert tiny_sdxl.pipeline_class == "StableDiffusionXLPipeline"
    assert tiny_sdxl.resolution == 64
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.path)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)

    comps = load_components(tiny_sdxl)
    assert [type(m).__name__ for m in comps.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert len(comps.tokenizers) == 2
    hidden = sum(m.config.hidden_size for m in comps.text_encoders)
    assert comps.denoiser.config.cross_attention_dim == hidden
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"
