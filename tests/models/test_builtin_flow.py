"""brandtune.models.builtin: the flow-matching built-in models (builtin:tiny-flux, builtin:tiny-flux-schnell,
builtin:tiny-sd3) build from config, load in diffusers with every weight in place, generate, build byte for byte
the same twice; brandtune.models.tokenizer's T5 tokenizer loads and round-trips captions.

They are built with ensure_builtin and loaded with diffusers directly: resolve_base learns these families
separately.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_helpers import PROMPT, _generator

from brandtune.models import BUILTIN_MODELS
from brandtune.models import builtin as builtin_module
from brandtune.models.builtin import COMPLETE_MARKER, builtin_spec, ensure_builtin
from brandtune.models.revision import REVISION_FILE
from brandtune.models.tokenizer import T5_MAX_LENGTH, write_t5_tokenizer_files

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")

FLOW_REFS = ("builtin:tiny-flux", "builtin:tiny-flux-schnell", "builtin:tiny-sd3")
# ref -> (pipeline class, component folders, the T5 tokenizer's folder)
LAYOUT: dict[str, tuple[str, set[str], str]] = {
    "builtin:tiny-flux": (
        "FluxPipeline",
        {"transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"},
        "tokenizer_2",
    ),
    "builtin:tiny-flux-schnell": (
        "FluxPipeline",
        {"transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"},
        "tokenizer_2",
    ),
    "builtin:tiny-sd3": (
        "StableDiffusion3Pipeline",
        {
            "transformer",
            "vae",
            "scheduler",
            "text_encoder",
            "text_encoder_2",
            "text_encoder_3",
            "tokenizer",
            "tokenizer_2",
            "tokenizer_3",
        },
        "tokenizer_3",
    ),
}
# What transformers (LOAD REPORT: MISSING / UNEXPECTED) and diffusers ("newly initialized", "were not used")
# print when a checkpoint's keys do not match the model.
_KEY_REPORT = re.compile(r"missing|unexpected|newly initialized|not initialized|were not used", re.IGNORECASE)


@pytest.fixture(scope="module")
def flow_builds(from_config: None) -> dict[str, Path]:
    """The three flow builtins, built once into the session's BRANDTUNE_HOME."""
    return {ref: ensure_builtin(ref) for ref in FLOW_REFS}


class _Collect(logging.Handler):
    """Collects ``(logger name, message)`` of every record it sees."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.getMessage()))


def _load(ref: str, folder: Path) -> tuple[Any, list[tuple[str, str]]]:
    """Load ``folder`` with the ref's pipeline class; return it and the key-mismatch reports loading logged or
    warned, as ``(source, message)``.

    transformers and diffusers log through their own library loggers (which need not propagate to the root
    logger), so a handler is put on those two directly.
    """
    import diffusers

    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    for lib_logger in loggers:
        lib_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = getattr(diffusers, LAYOUT[ref][0]).from_pretrained(folder, use_safetensors=True)
    finally:
        for lib_logger in loggers:
            lib_logger.removeHandler(handler)
    pipe.set_progress_bar_config(disable=True)
    messages = handler.records + [("warnings", str(w.message)) for w in caught]
    return pipe, [(source, msg) for source, msg in messages if _KEY_REPORT.search(msg)]


def _t5_tokenizer(pipe: Any) -> Any:
    return pipe.tokenizer_3 if hasattr(pipe, "tokenizer_3") else pipe.tokenizer_2


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != REVISION_FILE  # the revision cache records the folder it was computed in
    }


def test_flow_builtins_are_listed_with_their_families() -> None:
    assert list(BUILTIN_MODELS)[-3:] == ["tiny-flux", "tiny-flux-schnell", "tiny-sd3"]
    assert [builtin_spec(ref).family for ref in FLOW_REFS] == ["flux", "flux", "sd3"]
    names = {builtin_module.builtin_dir(builtin_spec(ref)).name for ref in FLOW_REFS}
    assert len(names) == 3, "dev and schnell must not share a build folder"


@pytest.mark.parametrize("ref", FLOW_REFS)
def test_flow_builtin_loads_cleanly_and_generates(ref: str, flow_builds: dict[str, Path]) -> None:
    import torch

    folder = flow_builds[ref]
    class_name, components, t5_folder = LAYOUT[ref]
    assert (folder / COMPLETE_MARKER).is_file()
    assert {p.name for p in folder.iterdir() if p.is_dir()} == components
    assert not list(folder.rglob("*.bin")), "weights must be safetensors only"
    # CLIP folders get vocab.json/merges.txt; the T5 folder only its own two files, never the CLIP writer's.
    assert sorted(p.name for p in (folder / t5_folder).iterdir()) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for clip_folder in components - {t5_folder}:
        if clip_folder.startswith("tokenizer"):
            assert (folder / clip_folder / "merges.txt").is_file()

    pipe, reports = _load(ref, folder)
    assert type(pipe).__name__ == class_name
    assert not reports, reports

    t5 = _t5_tokenizer(pipe)
    assert type(t5).__name__ in {"T5Tokenizer", "T5TokenizerFast"}
    assert (t5.model_max_length, t5.pad_token_id, t5.eos_token_id) == (T5_MAX_LENGTH, 0, 1)
    t5_encoder = pipe.text_encoder_3 if class_name == "StableDiffusion3Pipeline" else pipe.text_encoder_2
    assert type(t5_encoder).__name__ == "T5EncoderModel"
    assert t5_encoder.config.vocab_size == len(t5)
    assert t5_encoder.config.d_model == pipe.transformer.config.joint_attention_dim
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    vae = pipe.vae.config
    if class_name == "FluxPipeline":
        dev = ref == "builtin:tiny-flux"
        assert pipe.transformer.config.guidance_embeds is dev
        assert pipe.scheduler.config.use_dynamic_shifting is dev
        assert pipe.transformer.config.in_channels == 4 * vae.latent_channels
        assert pipe.transformer.config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
        assert (vae.shift_factor, vae.scaling_factor) == (0.1159, 0.3611)
    else:
        assert [type(m).__name__ for m in (pipe.text_encoder, pipe.text_encoder_2)] == [
            "CLIPTextModelWithProjection"
        ] * 2
        clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert clip_width <= t5_encoder.config.d_model, "SD3 pads CLIP to T5's width"
        assert pipe.transformer.config.pooled_projection_dim == (
            pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        )
        assert pipe.scheduler.config.shift == 3.0
        assert (vae.shift_factor, vae.scaling_factor) == (0.0609, 1.5305)

    image = pipe(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=2,
        max_sequence_length=T5_MAX_LENGTH,
        generator=_generator(),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0
    with torch.no_grad():  # the prompt reaches the T5 encoder: two prompts give two different encodings
        ids = t5(["a red bottle", "a blue mug"], padding="max_length", max_length=8, return_tensors="pt")
        hidden = t5_encoder(ids.input_ids).last_hidden_state
    assert not torch.allclose(hidden[0], hidden[1])


def test_key_report_check_catches_bad_weights(flow_builds: dict[str, Path], tmp_path: Path) -> None:
    """The check above sees a mismatched checkpoint, from transformers (the T5) and diffusers (the transformer)."""
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(flow_builds["builtin:tiny-flux"], broken)
    for weights in (
        broken / "text_encoder_2" / "model.safetensors",
        broken / "transformer" / "diffusion_pytorch_model.safetensors",
    ):
        state = load_file(weights)
        state.pop(sorted(state)[0])
        state["not.a.real.weight"] = torch.zeros(1)
        save_file(state, weights, metadata={"format": "pt"})
    _, reports = _load("builtin:tiny-flux", broken)
    sources = {source.split(".")[0] for source, _ in reports}
    assert sources == {"transformers", "diffusers"}, reports


def test_flow_builds_are_byte_identical(
    flow_builds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("BRANDTUNE_HOME", str(tmp_path / "other-home"))
    for ref, first in flow_builds.items():
        second = ensure_builtin(ref)
        assert second != first and second.name == first.name
        assert _file_hashes(second) == _file_hashes(first), ref
        revisions = [json.loads((f / REVISION_FILE).read_text())["revision"] for f in (first, second)]
        assert revisions[0] == revisions[1]


def test_t5_tokenizer_round_trips_a_caption(tmp_path: Path, flow_builds: dict[str, Path]) -> None:
    from diffusers import FluxPipeline
    from transformers import T5TokenizerFast

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    write_t5_tokenizer_files(one)
    write_t5_tokenizer_files(two)
    assert _file_hashes(one) == _file_hashes(two), "the T5 tokenizer files must be deterministic"

    tokenizer = T5TokenizerFast.from_pretrained(one)
    assert tokenizer.model_max_length == T5_MAX_LENGTH
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer(PROMPT).input_ids
    assert len(ids) == len(PROMPT.split()) + 1, "each corpus word is one token, then </s>"
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT

    caption = "Acme's NEW bottle, 2026 edition: café au lait!"
    ids = tokenizer(caption).input_ids
    assert tokenizer.unk_token_id not in ids, "any Latin-script text tokenizes"
    assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    assert tokenizer.unk_token_id in tokenizer("新しい").input_ids, "other scripts are <unk>, as in T5"
    padded = tokenizer("a red bottle", padding="max_length", max_length=T5_MAX_LENGTH, truncation=True)
    assert len(padded.input_ids) == T5_MAX_LENGTH and padded.input_ids[-1] == tokenizer.pad_token_id

    short = tmp_path / "short"
    short.mkdir()
    write_t5_tokenizer_files(short, model_max_length=16)
    assert T5TokenizerFast.from_pretrained(short).model_max_length == 16
    with pytest.raises(ValueError, match="model_max_length must be a positive integer"):
        write_t5_tokenizer_files(short, model_max_length=0)

    # A pipeline saved again by diffusers loads back with the same T5 tokenizer.
    pipe = FluxPipeline.from_pretrained(flow_builds["builtin:tiny-flux"], use_safetensors=True)
    pipe.save_pretrained(tmp_path / "saved")
    again = FluxPipeline.from_pretrained(tmp_path / "saved", use_safetensors=True)
    assert again.tokenizer_2(caption).input_ids == ids
    assert again.tokenizer_2.model_max_length == T5_MAX_LENGTH
    assert again.tokenizer_2.decode(ids, skip_special_tokens=True) == caption
