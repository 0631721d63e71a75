"""The evaluation job with local CLIP and DINOv2 folders (EvalConfig.clip_model / dino_model): clip_t, clip_i and
dino for every model compared, against the product regions of the candidate's brand photos. Tiny random models
(tests/helpers/metric_model_helpers.py): plumbing, not values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from brandtune.config import EvalConfig, GateConfig, GateRule, SamplerConfig, job_config
from brandtune.errors import ConfigError
from brandtune.evaluation.job import evaluate

pytestmark = pytest.mark.usefixtures("torch_threads")

MODEL_METRICS = {"clip_t", "clip_i", "dino"}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_prompt_acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """acme with its first evaluation prompt only (a brands folder of its own): a quarter of the sampling."""
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "data" / "brands" / "acme" / "brand.yaml").read_text())
    spec["evaluation_prompts"] = spec["evaluation_prompts"][:1]
    (tmp_path / "brands" / "acme").mkdir(parents=True)
    (tmp_path / "brands" / "acme" / "brand.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("BRANDTUNE_BRANDS_DIR", str(tmp_path / "brands"))


@pytest.mark.usefixtures("one_prompt_acme")
def test_every_model_gets_clip_and_dino_on_the_product_regions(
    versions: list[str], acme_dataset: Path, clip_dir: Path, dino_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from brandtune.evaluation.brand_photos import load_brand_photos
    from brandtune.evaluation.model_metrics import ClipScorer

    # opting in to a gate rule on a model-based metric is one rule; cosines lie in [-1, 1], so this one passes
    gate = GateConfig(rules=[GateRule(metric="dino", comparison="no_regression", tolerance=2.0)])
    outcome = evaluate(
        EvalConfig(
            brand="acme",
            against=versions[0],  # candidate, champion and base
            seeds=[0],
            sampler=SamplerConfig(num_inference_steps=2),
            promote=False,
            gate=gate,
            clip_model=clip_dir,
            dino_model=dino_dir,
            output_dir=tmp_path / "report",
        )
    )
    report = json.loads(outcome.report_json.read_text())
    keys = ["candidate", "champion", "base"]
    assert [m["key"] for m in report["models"]] == keys
    prompts = len(report["prompts"])
    assert prompts == 1
    for key in keys:
        stats = report["aggregates"][key]
        assert set(stats) >= MODEL_METRICS, key
        assert all(stats[m]["n"] == prompts and math.isfinite(stats[m]["mean"]) for m in MODEL_METRICS), key
        assert all(math.isfinite(outcome.metrics[key][m]) for m in MODEL_METRICS), key
    assert all(set(row["metrics"]) >= MODEL_METRICS for row in report["per_image"])
    assert outcome.gate.passed and outcome.gate.rules[0].status == "pass"

    # The references are every photo of the candidate's dataset, the masked ones as their product region.
    photos = load_brand_photos(acme_dataset)
    masks = sorted(acme_dataset.glob("*.mask.png"))
    assert masks, "the sample brand's dataset has product masks"
    fidelity = report["subject_fidelity"]
    assert fidelity["clip_model"] == str(clip_dir) and fidelity["dino_model"] == str(dino_dir)
    assert fidelity["references"] == len(photos) and fidelity["product_regions"] == len(masks)
    clip = ClipScorer.from_pretrained(clip_dir)
    row = next(r for r in report["per_image"] if r["model"] == "candidate")
    with Image.open(outcome.report_html.parent / row["image"]) as img:
        image = img.convert("RGB")
    cropped = clip.clip_i([image], clip.reference_embeddings(photos))[0]
    whole = clip.clip_i([image], clip.image_embeddings([p.image for p in photos]))[0]
    assert row["metrics"]["clip_i"] == pytest.approx(cropped, abs=1e-5)
    assert abs(cropped - whole) > 1e-4  # the crops, not the whole photos, were the references
    prompt = report["prompts"][row["prompt_index"]]
    assert row["metrics"]["clip_t"] == pytest.approx(clip.clip_t([image], [prompt])[0], abs=1e-4)
    html = outcome.report_html.read_text()
    assert f"{len(masks)} as their product region" in html and "<b>clip_i</b>" in html
    assert np.isfinite(report["aggregates"]["candidate"]["palette_delta_e"]["mean"])  # the rest as before


def test_a_bad_model_folder_is_a_one_line_config_error(tmp_path: Path, dino_dir: Path) -> None:
    missing = tmp_path / "no-such-clip"
    with pytest.raises(ConfigError) as err:
        job_config(EvalConfig, None, {"brand": "acme", "clip_model": str(missing)})
    assert "\n" not in str(err.value) and str(missing) in str(err.value) and "clip_model" in str(err.value)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValidationError, match="pickled weights are not loaded"):
        EvalConfig(brand="acme", dino_model=pickled)
    # a folder that passes the check but is no CLIP model stops the job before anything is fetched or sampled
    with pytest.raises(ConfigError, match="could not be loaded as CLIPModel") as err:
        evaluate(EvalConfig(brand="acme", clip_model=dino_dir, output_dir=tmp_path / "never"))
    assert "\n" not in str(err.value) and str(dino_dir) in str(err.value)
    assert not (tmp_path / "never").exists()
    assert EvalConfig(brand="acme").clip_model is None and EvalConfig(brand="acme").dino_model is None
