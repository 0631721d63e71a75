"""``brandtune evaluate`` (brandtune.cli.evaluate) through the real entry point: --config then flags, up to the
registry look-up (the evaluation job itself is tested with the gate, in tests/evaluation/test_job.py and the flows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

RunCli = Callable[[list[str]], tuple[int, str, str]]


def test_config_file_then_flags(tmp_path: Path, run_cli: RunCli) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("seeds: [0]\nsampler:\n  num_inference_steps: 500\n")
    code, out, err = run_cli(["evaluate", "-b", "acme", "--config", str(config)])
    assert code == 2 and out == ""
    assert err.startswith(f"error: {config}: sampler.num_inference_steps: ") and len(err.splitlines()) == 1, (
        err
    )
    # --steps beats the file: the job validates and goes on to the registry, where this module has no model
    code, _, err = run_cli(["evaluate", "-b", "acme", "--config", str(config), "--steps", "3"])
    assert code == 2 and "No registered model 'acme-lora'" in err and len(err.splitlines()) == 1, err


def test_device_cuda_without_a_gpu_is_one_line_before_the_registry(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "report"
    code, stdout, err = run_cli(["evaluate", "-b", "acme", "--device", "cuda", "--output", str(out)])
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: device 'cuda': no CUDA GPU is visible here") and not out.exists()
    # --dtype is a flag of its own; the job goes on to the registry, where this module has no model
    code, _, err = run_cli(
        ["evaluate", "-b", "acme", "--device", "cpu", "--dtype", "bfloat16", "--output", str(out)]
    )
    assert code == 2 and "No registered model 'acme-lora'" in err, err
