"""The Prefect UI's run form for the `retrain` deployment, rendered in headless Chromium.

Debian's `chromium` renders the page (`--virtual-time-budget` lets the JS app fetch and render before the DOM is
dumped and the screenshot taken). The test installs chromium with apt when it is missing and skips, naming the
reason, only when that install fails.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from brandtune import services

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,3200",
    "--virtual-time-budget=30000",
]


def chromium() -> str:
    """Path of a chromium binary, installing Debian's package when missing (skip only if that fails)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {exc}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("`apt-get install chromium` ran but no chromium binary is on PATH")
    return found


@pytest.fixture(scope="module")
def retrain_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A Prefect server with prefect.yaml deployed; yields (server URL, retrain deployment id)."""
    import json
    import urllib.request

    root = tmp_path_factory.mktemp("prefect_ui")
    with services.ServiceStack() as stack:
        api = stack.add(services.prefect_server(services.free_port(), root / "logs", root / "prefect"))
        services.wait_http(api, f"{api.url}/api/health", timeout=180)
        env = services.prefect_env(f"{api.url}/api", root / "prefect", BRANDTUNE_REPO=str(REPO_ROOT))
        services.create_work_pool("brandtune-local", env)
        services.deploy_all(REPO_ROOT, env)
        with urllib.request.urlopen(
            f"{api.url}/api/deployments/name/retrain/weekly-retrain", timeout=30
        ) as r:
            deployment = json.load(r)
        yield str(api.url), deployment["id"]


def test_run_form_shows_parameters_with_descriptions(
    retrain_deployment: tuple[str, str], tmp_path: Path
) -> None:
    browser = chromium()
    url, deployment_id = retrain_deployment
    shot = tmp_path / "retrain-run-form.png"
    page = f"{url}/deployments/deployment/{deployment_id}/run"
    done = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", done.stdout, flags=re.S))
    text = html.unescape(re.sub(r"\s+", " ", text))
    (tmp_path / "retrain-run-form.txt").write_text(text)
    assert "weekly-retrain" in text and "Parameters" in text, text[:2000]
    for expected in (
        "brand (Optional) Brand slug",
        "training (Optional) Training settings",
        "Max Train Steps (Optional) Optimizer steps to train for.",
        "Mixed Precision (Optional) Mixed precision: fp16 needs a GPU",
        "Accelerate Config (Optional)",
        "evaluation (Optional) Seeds, sampler and the promotion gate's rules.",
        "Seeds (Optional) Fixed seeds per prompt.",
        "Sampler (Optional) Sampler settings, the same for every model compared.",
        "Scheduler (Optional) Sampler: ddim, euler, dpm++ (SD, SDXL) or the model's default; auto:",
        "Num Inference Steps (Optional) Denoising steps per image.",
        "promote (Optional) Make the new adapter @champion",
    ):
        assert expected in text, f"{expected!r} not on the run form:\n{text[:4000]}"
    # dropdowns: the choices of a Literal are listed
    assert "no fp16 bf16" in text and "multi_gpu_ddp" in text
    assert (
        "auto default ddim euler dpm++" in text
    )  # the evaluation sampler's scheduler, nested two levels down
    assert shot.is_file() and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
