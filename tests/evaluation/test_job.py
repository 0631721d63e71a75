"""The evaluation job (brandtune.evaluation.job) on adapters trained and registered in this module: the gate
refuses, then promotes, then compares against the champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generation_helpers import FAST

from brandtune.config import EvalConfig, GateConfig, GateRule
from brandtune.evaluation.job import evaluate

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


def test_evaluation_gate_refuses_then_promotes(versions: list[str], tmp_path: Path) -> None:
    import mlflow

    from brandtune.registry import list_versions

    common = {"brand": "acme", "seeds": [0, 1], "sampler": FAST, "batch_size": 8}
    impossible = GateConfig(rules=[GateRule(metric="palette_delta_e", comparison="max", threshold=0.01)])
    failed = evaluate(EvalConfig(**common, gate=impossible, output_dir=tmp_path / "fail"))
    assert not failed.gate.passed and not failed.promoted
    assert failed.gate.failed[0].metric == "palette_delta_e"
    rows = {v.version: v for v in list_versions("acme")}
    assert not any("champion" in v.aliases for v in rows.values())
    cand = rows[failed.candidate_version]
    assert cand.tags["brandtune.gate"] == "fail" and "palette_delta_e" in cand.tags["brandtune.gate_reason"]
    assert "palette_delta_e" in cand.metrics

    # Reports: every model, prompt and metric.
    report = json.loads(failed.report_json.read_text())
    assert [m["key"] for m in report["models"]] == ["candidate", "base"]
    assert len(report["per_image"]) == 2 * 4 * 2
    assert {"palette_delta_e", "technical_ok", "ref_ssim"} <= set(report["aggregates"]["candidate"])
    html = failed.report_html.read_text()
    assert "Candidate v" in html and "Base model" in html and "data:image/png;base64" in html
    run = mlflow.MlflowClient().get_run(failed.mlflow_run_id)
    assert run.data.tags["brandtune.gate"] == "fail"
    assert "candidate.palette_delta_e" in run.data.metrics

    lenient = GateConfig(
        rules=[
            GateRule(metric="technical_ok", comparison="min", threshold=0.0),
            GateRule(metric="palette_delta_e", comparison="no_regression", tolerance=100.0),
        ]
    )
    passed = evaluate(EvalConfig(**common, gate=lenient, output_dir=tmp_path / "pass"))
    assert passed.gate.passed and passed.promoted
    rows = {v.version: v for v in list_versions("acme")}
    assert "champion" in rows[passed.candidate_version].aliases

    # With a champion, the next evaluation compares against it; a failing gate leaves it in place.
    from brandtune.registry import promote

    promote("acme", versions[0])  # v1 champion, v2 previous; candidate is still v2
    again = evaluate(EvalConfig(**common, gate=impossible, output_dir=tmp_path / "again", include_base=False))
    assert again.champion_version == versions[0] and not again.promoted
    assert [m["key"] for m in json.loads(again.report_json.read_text())["models"]] == [
        "candidate",
        "champion",
    ]
    assert "champion" in {v.version: v for v in list_versions("acme")}[versions[0]].aliases


def test_evaluation_in_two_aspects_shows_the_brand_photos(versions: list[str], tmp_path: Path) -> None:
    from PIL import Image

    gate = GateConfig(rules=[GateRule(metric="technical_ok", comparison="min", threshold=0.0)])
    outcome = evaluate(
        EvalConfig(
            brand="acme",
            seeds=[0],
            sampler=FAST,
            aspects=["1:1", "2:3"],
            against=None,  # the candidate alone, whatever an earlier test promoted
            include_base=False,
            promote=False,
            gate=gate,
            output_dir=tmp_path / "aspects",
        )
    )
    report = json.loads(outcome.report_json.read_text())
    assert report["sampler"]["sizes"] == {"1:1": [64, 64], "2:3": [48, 80]}
    sizes = {}
    for row in report["per_image"]:
        with Image.open(outcome.report_html.parent / row["image"]) as img:
            sizes.setdefault(row["aspect"], set()).add(img.size)
    assert sizes == {"1:1": {(64, 64)}, "2:3": {(48, 80)}}
    assert len(report["per_image"]) == 4 * 2  # 4 prompts x 1 seed x 2 aspects
    # the candidate's dataset (the session's ingest of acme) is shown in the report
    assert (
        len(report["brand_photos"]) == 8
        and "the one the candidate was trained on" in report["brand_photos_note"]
    )
    assert "<h2>Brand photos</h2>" in outcome.report_html.read_text()
