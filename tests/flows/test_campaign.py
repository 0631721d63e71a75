"""The campaign flow (flows/campaign.py) through Prefect's test harness: a brand's standard campaigns from
@champion, with a gallery link and a settings x counts table as artifacts, and a second run that makes nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from flow_helpers import _artifact

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def brands(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """acme with one small standard campaign (2 settings x 2 variations, 2 sampler steps)."""
    root = tmp_path_factory.mktemp("brands")
    spec = yaml.safe_load((REPO_ROOT / "data/brands/acme/brand.yaml").read_text())
    spec["campaigns"] = [
        {
            "name": "mini",
            "prompt": "a photo of {trigger} {subject}",
            "settings": ["beach", "studio"],
            "variations": 2,
            "sampler": {"num_inference_steps": 2},
        }
    ]
    (root / "acme").mkdir()
    (root / "acme" / "brand.yaml").write_text(yaml.safe_dump(spec))
    old = os.environ["BRANDTUNE_BRANDS_DIR"]
    os.environ["BRANDTUNE_BRANDS_DIR"] = str(root)
    yield root
    os.environ["BRANDTUNE_BRANDS_DIR"] = old


def test_campaign_flow_publishes_gallery_and_counts_and_skips_a_repeat(
    prefect_harness: None, versions: list[str], brands: Path
) -> None:
    from brandtune.registry import promote
    from flows.campaign import campaign_flow

    promote("acme", versions[0])
    first = campaign_flow(brand="acme", reason="weekly schedule")
    (made,) = first["campaigns"]
    assert first["version"] == versions[0]
    assert (made["campaign"], made["images"], made["generated"], made["reused"]) == ("mini", 4, 4, False)
    assert Path(made["gallery"]).is_file()
    assert Path(made["gallery"]).resolve().as_uri() in _artifact("campaign-acme-mini-gallery").data
    summary = _artifact("campaign-acme-summary").data
    assert "| campaign | beach | studio | images | this run |" in summary
    assert "| 2 | 2 | 4 | 4 generated |" in summary

    again = campaign_flow(brand="acme", reason="weekly schedule")
    (same,) = again["campaigns"]
    assert (same["reused"], same["generated"], same["output_dir"]) == (True, 0, made["output_dir"])
    assert "already generated: nothing new" in _artifact("campaign-acme-summary").data


def test_an_unknown_campaign_fails_before_anything_is_generated(prefect_harness: None, brands: Path) -> None:
    from flows.campaign import campaign_flow

    state = campaign_flow(brand="acme", campaigns=["nope"], return_state=True)
    assert state.is_failed() and "no campaign 'nope'" in state.message


def test_device_cuda_without_a_gpu_fails_the_flow_before_anything(
    prefect_harness: None, brands: Path
) -> None:
    from flows.campaign import campaign_flow

    state = campaign_flow(brand="acme", device="cuda", return_state=True)
    assert state.is_failed() and "device 'cuda': no CUDA GPU is visible" in state.message
    bad = campaign_flow(brand="acme", dtype="half", return_state=True)  # the form's choices: validated
    assert bad.is_failed() and "dtype" in bad.message
