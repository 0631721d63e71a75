"""The ``brandtune`` command line: usage errors in one line, multi-value --settings, --reproduce from a manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brandtune.cli import parse_command_line, run
from brandtune.cli_jobs import spread_values
from brandtune.errors import GenerationError

BRANDTUNE = Path(sys.executable).parent / "brandtune"  # the console entry point pip installed


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; return its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--debug` sets BRANDTUNE_DEBUG in the process; each test starts (and leaves) without it."""
    monkeypatch.delenv("BRANDTUNE_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("args", "error", "usage"),
    [
        (["generate", "--stepz", "3"], "No such option: --stepz", "brandtune generate [OPTIONS]"),
        (["register", "--brand", "acme"], "Missing option '--run'", "brandtune register [OPTIONS]"),
        (["base", "sample", "a mug", "--num", "many"], "Invalid value for '--num'", "brandtune base sample"),
        (
            ["generate", "-b", "acme", "--prompt", "p", "--scheduler", "dpm"],
            "Invalid value for '--scheduler'",
            "brandtune generate [OPTIONS]",
        ),
    ],
    ids=["unknown-option", "missing-required-option", "bad-value-in-a-sub-group", "bad-choice"],
)
def test_usage_error_is_one_line_with_usage_hint(args: list[str], error: str, usage: str) -> None:
    proc = subprocess.run([str(BRANDTUNE), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("error: ") and error in lines[0], lines[0]
    assert lines[1].startswith(f"  usage: {usage}") and "--help" in lines[1], lines[1]


def test_brandtune_errors_stay_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--reproduce", str(tmp_path / "missing.json"), "--output", str(tmp_path / "out")]
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --reproduce ") and "no such file" in err and len(err.splitlines()) == 1
    # an option without its value is found by the parser before any command context exists
    code, _, err = _run(["evaluate", "--brand", "acme", "--candidate"], capsys)
    assert code == 2 and err.splitlines()[1].startswith("  usage: brandtune evaluate [OPTIONS]"), err
    with pytest.raises(GenerationError, match="no such file"):  # last: --debug stays set in this process
        run(["--debug", *args])


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


def test_help_describes_multi_value_settings(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = parse_command_line(["generate", "--reproduce", "m.json", "--output", "o"])
    settings = next(p for p in ctx.command.params if p.name == "settings")
    assert "several after one flag" in settings.help and "repeated" in settings.help
    code, out, _ = _run(["generate", "--help"], capsys)
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
def test_reproduce_from_the_manifest_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brandtune.generation import GenerateConfig, generate
    from brandtune.sampling import SamplerConfig

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
    code, out, err = _run(["generate", "--reproduce", str(result.manifest), "--output", str(again)], capsys)
    assert code == 0, err
    assert "reproduced 2 images" in out
    for entry in json.loads(result.manifest.read_text())["images"]:
        a = np.asarray(Image.open(result.output_dir / entry["file"]))
        b = np.asarray(Image.open(again / entry["file"]))
        assert np.array_equal(a, b), entry["file"]
    # A --brand that agrees is accepted; one that disagrees is refused, naming both, before any model loads.
    args = ["generate", "--reproduce", str(result.manifest), "--output", str(tmp_path / "third")]
    code, _, err = _run([*args, "--brand", "nike"], capsys)
    assert code == 2 and "'nike'" in err and "'acme'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "third").exists()
    code, _, err = _run([*args, "--brand", "acme"], capsys)
    assert code == 0, err
