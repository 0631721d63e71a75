"""The stage configs in brandtune.config: what their descriptions promise, and the shape of their sampler."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from brandtune.config import (
    BASE_RECOMMENDED,
    EvalConfig,
    GenerateConfig,
    SamplerConfig,
    TrainConfig,
    load_yaml_model,
)
from brandtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_descriptions_quote_builtin_tinys_shipped_recommendation() -> None:
    # the form says what an empty field becomes on builtin:tiny; those numbers are the shipped file's
    shipped = json.loads((REPO / "brandtune/assets/builtin_tiny/brandtune_training.json").read_text())
    for name in BASE_RECOMMENDED:
        description = TrainConfig.model_fields[name].description or ""
        assert "Empty: the base's recommendation" in description, name
        if name == "target_modules":
            assert "builtin:tiny: its non-attention layers" in description
            continue
        quoted = re.search(r"builtin:tiny: ([\w.+-]+)", description)
        assert quoted, f"{name}: {description!r} does not say what builtin:tiny recommends"
        value = shipped[name]
        assert (quoted[1] == value) if isinstance(value, str) else float(quoted[1]) == value, name


def test_evaluation_and_generation_nest_the_same_sampler(tmp_path: Path) -> None:
    sampler = SamplerConfig(scheduler="euler", num_inference_steps=3, negative_prompt="blurry")
    evaluation = EvalConfig(brand="acme", sampler=sampler)
    generation = GenerateConfig(brand="acme", prompt="p", sampler=sampler)
    assert evaluation.sampler == generation.sampler == sampler
    assert EvalConfig(brand="acme").sampler == SamplerConfig()
    with pytest.raises(ValidationError, match="num_inference_steps"):  # the flat keys are gone
        EvalConfig(brand="acme", num_inference_steps=3)
    path = tmp_path / "eval.yaml"
    path.write_text("brand: acme\nseeds: [0, 1]\nsampler: {scheduler: dpm++, guidance_scale: 6}\n")
    loaded = load_yaml_model(EvalConfig, path)
    assert (loaded.sampler.scheduler, loaded.sampler.guidance_scale, loaded.seeds) == ("dpm++", 6.0, [0, 1])
    path.write_text("brand: acme\nguidance_scale: 6\n")
    with pytest.raises(ConfigError, match="guidance_scale: unknown key"):
        load_yaml_model(EvalConfig, path)


def test_bounds_the_flows_had_are_the_librarys_own() -> None:
    with pytest.raises(ValidationError, match="at most 64"):
        EvalConfig(brand="acme", seeds=list(range(65)))
    with pytest.raises(ValidationError, match="less than or equal to 200"):
        TrainConfig(brand="acme", validation_inference_steps=201)
    with pytest.raises(ValidationError, match="at least 1"):
        EvalConfig(brand="acme", candidate="")
    with pytest.raises(ValidationError, match="at least 1"):
        GenerateConfig(brand="acme", prompt="p", model="")
    # the library's wider bounds stand: rank up to 1024, checkpointing_steps 0 (no checkpoints)
    assert TrainConfig(brand="acme", rank=512, checkpointing_steps=0).rank == 512
