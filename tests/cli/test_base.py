"""The ``brandtune base`` group (brandtune.cli.base) through the real entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

RunCli = Callable[[list[str]], tuple[int, str, str]]


def test_base_list_names_the_builtin_model(run_cli: RunCli) -> None:
    code, out, err = run_cli(["base", "list"])
    assert code == 0, err
    assert "builtin:tiny" in out


def test_build_tiny_config_file_then_flags(tmp_path: Path, run_cli: RunCli) -> None:
    config = tmp_path / "pretrain.yaml"
    config.write_text("num_images: 3\n")
    dest = tmp_path / "tiny"
    code, out, err = run_cli(["base", "build-tiny", "--config", str(config), "--dest", str(dest)])
    assert code == 2 and out == "" and err.startswith(f"error: {config}: num_images: "), err
    code, _, err = run_cli(
        ["base", "build-tiny", "--config", str(config), "--num-images", "2", "--dest", str(dest)]
    )
    assert code == 2 and err.startswith("error: flags: num_images: "), err
    assert not dest.exists()
