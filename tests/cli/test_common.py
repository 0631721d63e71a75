"""What the commands share (brandtune.cli._common): the one override path defaults -> --config file -> flags, the
flags the user passed, and CLI defaults that are the configs' own."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command

from brandtune.cli import app, parse_command_line
from brandtune.cli._common import given
from brandtune.config import EvalConfig, GenerateConfig, IngestConfig, PretrainConfig, job_config
from brandtune.errors import ConfigError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path, "brand: acme\nprompt: p\nvariations: 3\nseed: 5\nsampler:\n  guidance_scale: 2.5\n"
    )
    flags = {"variations": 1, "sampler.num_inference_steps": 2}
    cfg = job_config(GenerateConfig, path, flags)
    assert (cfg.variations, cfg.seed, cfg.model) == (1, 5, "champion")  # flag, file, default
    # a flag for one nested field keeps the file's other fields of that section
    assert (cfg.sampler.num_inference_steps, cfg.sampler.guidance_scale, cfg.sampler.scheduler) == (
        2,
        2.5,
        "auto",  # the default: the base family's sampler
    )
    assert job_config(GenerateConfig, None, {"brand": "acme", "prompt": "p"}) == GenerateConfig(
        brand="acme", prompt="p"
    )


def test_the_defaults_layer_sits_under_the_file(tmp_path: Path) -> None:
    base = {"resolution": 96, "trigger": "zq", "min_images": 7}
    cfg = job_config(IngestConfig, _yaml(tmp_path, "resolution: 48\n"), {"min_images": 2}, defaults=base)
    assert (cfg.resolution, cfg.trigger, cfg.min_images) == (48, "zq", 2)


def test_a_flag_given_as_none_still_overrides_the_file(tmp_path: Path) -> None:
    cfg = job_config(
        EvalConfig, _yaml(tmp_path, "brand: acme\nagainst: previous-champion\n"), {"against": None}
    )
    assert cfg.against is None  # `evaluate --against none`


def test_errors_are_one_line_naming_where_the_value_came_from(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "brand: acme\nprompt: p\nvariations: 0\n")
    with pytest.raises(ConfigError) as err:
        job_config(GenerateConfig, path, {})
    assert str(err.value).startswith(f"{path}: variations: ") and len(str(err.value).splitlines()) == 1
    with pytest.raises(ConfigError, match=r"^flags: variations: "):
        job_config(GenerateConfig, path, {"variations": -1})
    with pytest.raises(ConfigError, match=r"^flags: variations: "):
        job_config(GenerateConfig, None, {"brand": "acme", "prompt": "p", "variations": 0})
    with pytest.raises(ConfigError, match=r"unknown key"):
        job_config(GenerateConfig, _yaml(tmp_path, "brand: acme\nprompt: p\nvariatons: 2\n"), {})
    with pytest.raises(ConfigError, match="config file not found"):
        job_config(GenerateConfig, tmp_path / "missing.yaml", {})
    with pytest.raises(ConfigError, match="expected a mapping"):
        job_config(GenerateConfig, _yaml(tmp_path, "- a\n- b\n"), {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        job_config(GenerateConfig, _yaml(tmp_path, "brand: [acme\n"), {})


def test_given_keeps_only_the_flags_on_the_command_line() -> None:
    ctx = parse_command_line(["evaluate", "-b", "acme", "--steps", "3", "--against", "none"])
    flags = {
        "brand": ("brand", "acme"),
        "candidate": ("candidate", "candidate"),
        "steps": ("sampler.num_inference_steps", 3),
        "against": ("against", None),
        "no_promote": ("promote", True),
    }
    assert given(ctx, flags) == {"brand": "acme", "sampler.num_inference_steps": 3, "against": None}


def _cli_defaults(*path: str) -> dict[str, object]:
    command = get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {p.name: p.default for p in command.params}


def _config_default(model: type, dotted: str) -> object:
    head, _, rest = dotted.partition(".")
    field = model.model_fields[head]
    if rest:
        return _config_default(field.annotation, rest)
    return field.get_default(call_default_factory=True)


@pytest.mark.parametrize(
    ("command", "model", "mapping"),
    [
        (
            ("generate",),
            GenerateConfig,
            {
                "variations": "variations",
                "model": "model",
                "seed": "seed",
                "steps": "sampler.num_inference_steps",
                "guidance": "sampler.guidance_scale",
                "scheduler": "sampler.scheduler",
                "negative_prompt": "sampler.negative_prompt",
            },
        ),
        (
            ("evaluate",),
            EvalConfig,
            {"candidate": "candidate", "against": "against", "steps": "sampler.num_inference_steps"},
        ),
        (("base", "build-tiny"), PretrainConfig, {"seed": "seed", "threads": "num_threads"}),
    ],
    ids=["generate", "evaluate", "build-tiny"],
)
def test_cli_defaults_are_the_configs_defaults(command: tuple[str, ...], model: type, mapping: dict) -> None:
    # a default the help shows must be the one the job gets: a flag left out is not passed at all
    defaults = _cli_defaults(*command)
    assert {p: defaults[p] for p in mapping} == {p: _config_default(model, key) for p, key in mapping.items()}
