"""``brandtune train`` (brandtune.cli.train) through the real entry point: --config then flags, up to the point
where the job is resolved (a training run itself is tested in tests/test_training*.py and through the flows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.mark.usefixtures("acme_dataset")
def test_config_file_then_flags(tmp_path: Path, run_cli: RunCli) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("rank: 2000\ndataset: nosuchdataset\n")
    code, out, err = run_cli(["train", "-b", "acme", "--config", str(config)])
    assert code == 2 and out == ""
    assert err.startswith(f"error: {config}: rank: ") and len(err.splitlines()) == 1, err
    # --rank beats the file's bad rank; the file's dataset still applies, and is then looked up
    code, _, err = run_cli(["train", "-b", "acme", "--config", str(config), "--rank", "4"])
    assert code == 2 and "dataset acme/nosuchdataset does not exist" in err, err
    code, _, err = run_cli(
        ["train", "-b", "acme", "--config", str(config), "--rank", "4", "--dataset", "other"]
    )
    assert code == 2 and "dataset acme/other does not exist" in err, err
    code, _, err = run_cli(["train", "-b", "acme", "--rank", "5000"])
    assert code == 2 and err.startswith("error: flags: rank: "), err
    code, _, err = run_cli(["train", "-b", "acme", "--export", "ckpt"])
    assert code == 2 and "the only export format is 'kohya'" in err, err
