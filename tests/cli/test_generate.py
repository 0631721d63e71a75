"""``brandtune generate`` (brandtune.cli.generate): multi-value --settings, the --reproduce rules, --reproduce from a
manifest, and a job from --config then flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brandtune.cli import parse_command_line
from brandtune.cli.generate import spread_values

RunCli = Callable[[list[str]], tuple[int, str, str]]


def test_spread_values_gives_each_value_its_flag() -> None:
    flags = frozenset({"--settings"})
    assert spread_values(["--settings", "a", "b c", "--seed", "1", "d"], flags) == [
        "--settings", "a", "--settings", "b c", "--seed", "1", "d",
    ]  # fmt: skip
    assert spread_values(["--settings=a", "b", "-b", "x"], flags) == [
        "--settings=a",
        "--settings",
        "b",
        "-b",
        "x",
    ]
    assert spread_values(["--settings", "a", "--", "b"], flags) == ["--settings", "a", "--", "b"]
    assert spread_values(["-b", "x", "y"], flags) == ["-b", "x", "y"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--settings", "beach", "in a snowy cabin"], ["beach", "in a snowy cabin"]),
        (["--settings", "beach", "--settings", "snow"], ["beach", "snow"]),
        (["--settings", "beach", "studio", "--settings", "on a rock"], ["beach", "studio", "on a rock"]),
        (["--settings=beach", "studio"], ["beach", "studio"]),
    ],
    ids=["several-after-one-flag", "repeated", "both", "equals-form"],
)
def test_settings_take_several_values_and_repeat(flags: list[str], expected: list[str]) -> None:
    ctx = parse_command_line(["generate", "-b", "acme", "--prompt", "p", *flags, "--variations", "2"])
    assert ctx.params["settings"] == expected
    assert ctx.params["variations"] == 2


def test_help_describes_multi_value_settings(run_cli: RunCli) -> None:
    ctx = parse_command_line(["generate", "--reproduce", "m.json", "--output", "o"])
    settings = next(p for p in ctx.command.params if p.name == "settings")
    assert "several after one flag" in settings.help and "repeated" in settings.help
    code, out, _ = run_cli(["generate", "--help"])
    assert code == 0 and "--settings" in out and "<setting>..." in out


def test_reproduce_rules_are_usage_errors() -> None:
    from typer._click.exceptions import UsageError

    for args, message in [
        (["generate", "--prompt", "p"], "Missing option '--brand'"),
        (["generate", "-b", "acme"], "Missing option '--prompt'"),
        (["generate", "--reproduce", "m.json"], "Missing option '--output'"),
        (["generate", "--reproduce", "m.json", "--output", "o", "--seed", "3"], "--seed cannot be combined"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_command_line(args)
    assert parse_command_line(["generate", "--reproduce", "m.json", "--output", "o"]).params["brand"] is None


@pytest.mark.usefixtures("acme_dataset", "one_torch_thread")
def test_reproduce_from_the_manifest_alone(tmp_path: Path, run_cli: RunCli) -> None:
    from brandtune.config import GenerateConfig, SamplerConfig
    from brandtune.generation import generate

    job = GenerateConfig(
        brand="acme",
        prompt="a photo of {trigger} {subject}",
        settings=["beach", "in a snowy cabin"],
        variations=1,
        model="base",
        sampler=SamplerConfig(num_inference_steps=2),
        batch_size=2,
        output_dir=tmp_path / "campaign",
    )
    result = generate(job, progress=False)
    again = tmp_path / "again"
    code, out, err = run_cli(["generate", "--reproduce", str(result.manifest), "--output", str(again)])
    assert code == 0, err
    assert "reproduced 2 images" in out
    for entry in json.loads(result.manifest.read_text())["images"]:
        a = np.asarray(Image.open(result.output_dir / entry["file"]))
        b = np.asarray(Image.open(again / entry["file"]))
        assert np.array_equal(a, b), entry["file"]
    # A --brand that agrees is accepted; one that disagrees is refused, naming both, before any model loads.
    args = ["generate", "--reproduce", str(result.manifest), "--output", str(tmp_path / "third")]
    code, _, err = run_cli([*args, "--brand", "nike"])
    assert code == 2 and "'nike'" in err and "'acme'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "third").exists()
    code, _, err = run_cli([*args, "--brand", "acme"])
    assert code == 0, err


def test_config_is_a_job_flag_that_reproduce_refuses() -> None:
    from typer._click.exceptions import UsageError

    with pytest.raises(UsageError, match="--config cannot be combined"):
        parse_command_line(["generate", "--reproduce", "m.json", "--output", "o", "--config", "job.yaml"])
    # the file may name the brand and the prompt, so --config alone is a complete command line
    assert parse_command_line(["generate", "--config", "job.yaml"]).params["brand"] is None


@pytest.mark.usefixtures("acme_dataset", "one_torch_thread")
def test_a_job_from_the_config_file_then_flags(tmp_path: Path, run_cli: RunCli) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "brand: acme\nprompt: a photo of {trigger} {subject}\nmodel: base\nvariations: 3\n"
        "sampler:\n  num_inference_steps: 7\n  guidance_scale: 2.5\n"
    )
    out_dir = tmp_path / "campaign"
    args = ["generate", "--config", str(job), "--variations", "1", "--steps", "1", "--output", str(out_dir)]
    code, out, err = run_cli(args)
    assert code == 0, err
    assert "campaign 1 generated" in out
    (image,) = json.loads((out_dir / "manifest.json").read_text())["images"]
    # flags beat the file (variations, steps), the file beats the defaults (guidance 2.5, not 4.0)
    assert (image["steps"], image["guidance"], image["scheduler"], image["model"]) == (1, 2.5, "ddim", "base")
    job.write_text("brand: acme\nprompt: p\nsampler:\n  guidance_scale: 99\n")
    code, out, err = run_cli(["generate", "--config", str(job)])
    assert code == 2 and out == ""
    assert err.startswith(f"error: {job}: sampler.guidance_scale: ") and len(err.splitlines()) == 1, err


@pytest.mark.usefixtures("acme_dataset", "one_torch_thread")
def test_reusing_output_with_other_settings_is_one_line_and_overwrite_remakes(
    tmp_path: Path, run_cli: RunCli
) -> None:
    out_dir = tmp_path / "campaign"
    args = ["generate", "-b", "acme", "--prompt", "a photo of {trigger} {subject}", "--model", "base"]
    args += ["--variations", "1", "--output", str(out_dir)]
    code, out, err = run_cli([*args, "--steps", "1"])
    assert code == 0 and "campaign 1 generated" in out, err
    before = (out_dir / "manifest.json").read_bytes()
    code, out, err = run_cli([*args, "--steps", "2"])
    [line] = [line for line in err.splitlines() if line.startswith("error:")]  # (diffusers' load bars aside)
    assert code == 2 and out == "" and err.rstrip().endswith(line), err
    assert "sampler num_inference_steps 1, but this job has 2" in line and "--overwrite" in line
    assert (out_dir / "manifest.json").read_bytes() == before
    code, out, err = run_cli([*args, "--steps", "2", "--overwrite"])
    assert code == 0 and "campaign 1 generated, 0 already there" in out, err
    (image,) = json.loads((out_dir / "manifest.json").read_text())["images"]
    assert image["steps"] == 2
    from typer._click.exceptions import UsageError

    with pytest.raises(UsageError, match="--overwrite cannot be combined"):
        parse_command_line(["generate", "--reproduce", "m.json", "--output", "o", "--overwrite"])


def test_device_flags_set_the_job_and_cuda_without_a_gpu_is_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    from typer._click.exceptions import UsageError

    ctx = parse_command_line(
        ["generate", "-b", "acme", "--prompt", "p", "--device", "cpu", "--dtype", "bfloat16"]
    )
    assert (ctx.params["device"], ctx.params["dtype"]) == ("cpu", "bfloat16")
    with pytest.raises(UsageError, match="--device cannot be combined"):  # the manifest fixes the device
        parse_command_line(["generate", "--reproduce", "m.json", "--output", "o", "--device", "cpu"])
    with pytest.raises(UsageError, match="'gpu' is not one of"):
        parse_command_line(["generate", "-b", "acme", "--prompt", "p", "--device", "gpu"])
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["generate", "-b", "acme", "--prompt", "p", "--device", "cuda", "--output", str(out)]
    )
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: device 'cuda': no CUDA GPU is visible here") and not out.exists()
