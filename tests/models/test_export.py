"""brandtune.models.export: an exported base loads with plain diffusers and resolves to its source's revision."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_helpers import PROMPT, _generator

from brandtune.errors import ModelResolutionError
from brandtune.models import ResolvedBase, export_base, resolve_base

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


def test_exported_tiny_loads_with_plain_diffusers(tiny: ResolvedBase, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    dest = export_base("builtin:tiny", tmp_path / "tiny-export")
    assert dest == tmp_path / "tiny-export"
    assert not (dest / ".complete").exists()
    # transformers-4 style tokenizer files are there too
    assert (dest / "tokenizer" / "vocab.json").is_file() and (dest / "tokenizer" / "merges.txt").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(dest)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 64)

    local = resolve_base(str(dest))
    assert local.name == "tiny-export"
    assert local.path == dest
    assert local.family == "sd1"
    assert local.revision == tiny.revision, "an exported copy has the content revision of its source"


def test_export_refuses_non_empty_dest(tiny: ResolvedBase, tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(ModelResolutionError, match=r"not empty.*overwrite=True"):
        export_base("builtin:tiny", dest)
    assert (dest / "notes.txt").read_text() == "keep me"
    export_base("builtin:tiny", dest, overwrite=True)
    assert not (dest / "notes.txt").exists()
    assert (dest / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "taken"], "temp export dir left behind"
