"""Evaluation report: bootstrap CIs, aggregation, report.json and a self-contained report.html."""

from __future__ import annotations

import html
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from brandtune.errors import EvaluationError
from brandtune.evaluation.gate import evaluate_gate
from brandtune.evaluation.metrics import Palette, ReferenceSet, score_image, score_set
from brandtune.evaluation.report import (
    EvalResults,
    ImageRow,
    ModelInfo,
    SamplerSettings,
    aggregate,
    bootstrap_ci,
)
from brandtune.evaluation.report_html import write_report
from brandtune.synthetic import ACME_PRODUCT, ProductStyle, Scene, render_scene

SETTINGS = ("beach", "snow", "kitchen")
PRODUCTS = {
    "candidate": ACME_PRODUCT,
    "champion": ProductStyle("bottle", "teal", "yellow", "star", "yellow"),
    "base": ProductStyle("can", "red", "white"),
}


def build_results(out_dir: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> EvalResults:
    """Synthetic stand-ins for three models' images, scored with the real metrics."""
    palette = Palette.from_hex(["#1fa6a0", "#f28c28"], ["#f4efe3", "#ffffff"])
    refs = ReferenceSet.from_images(
        [render_scene(Scene(ACME_PRODUCT, s, 100 + i), 64) for s in SETTINGS for i in range(2)]
    )
    rows, images = [], {k: [] for k in PRODUCTS}
    for key, product in PRODUCTS.items():
        for p_index, setting in enumerate(SETTINGS):
            for seed in seeds:
                img = render_scene(Scene(product, setting, seed), 64)
                rel = f"images/{key}/p{p_index}_s{seed}.png"
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                img.save(out_dir / rel)
                images[key].append(img)
                metrics = score_image(img, palette=palette, references=refs)
                rows.append(ImageRow(model=key, prompt_index=p_index, seed=seed, image=rel, metrics=metrics))
    means = {k: {m: v["mean"] for m, v in stats.items()} for k, stats in aggregate(rows).items()}
    gate = evaluate_gate(means["candidate"], means["champion"])
    return EvalResults(
        brand="acme",
        brand_display_name="ACME Drinks",
        created_at=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        models=[
            ModelInfo(
                key="candidate",
                label="Candidate v3",
                uri="models:/acme-lora/3",
                version="3",
                base_model="builtin:tiny",
            ),
            ModelInfo(
                key="champion",
                label="Champion v2",
                uri="models:/acme-lora/2",
                version="2",
                base_model="builtin:tiny",
            ),
            ModelInfo(key="base", label="Base model", base_model="builtin:tiny"),
        ],
        prompts=[
            f"a photo of acme bottle {s}" for s in ("on a beach", "in the snow", "on a kitchen counter")
        ],
        seeds=list(seeds),
        sampler=SamplerSettings(scheduler="DDIMScheduler", steps=4, guidance_scale=5.0, width=64, height=64),
        per_image=rows,
        set_metrics={k: score_set(v) for k, v in images.items()},
        gate=gate.to_dict(),
    )


def test_bootstrap_ci_brackets_mean_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(10, 2, 40)
    mean, low, high = bootstrap_ci(values, n=500, seed=3)
    assert low < mean < high
    assert mean == pytest.approx(values.mean())
    assert bootstrap_ci(values, n=500, seed=3) == (mean, low, high)
    narrow = bootstrap_ci(values, alpha=0.5)
    assert high - low > narrow[2] - narrow[1]
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, math.nan])


def test_aggregate_groups_by_model_and_metric() -> None:
    rows = [
        {"model": "a", "metrics": {"x": 1.0, "y": math.nan}},
        {"model": "a", "metrics": {"x": 3.0, "y": math.nan}},
        ImageRow(model="b", prompt_index=0, seed=0, image="b.png", metrics={"x": 5.0}),
    ]
    stats = aggregate(rows)
    assert stats["a"]["x"]["mean"] == 2.0 and stats["a"]["x"]["n"] == 2
    assert stats["a"]["x"]["ci_low"] <= 2.0 <= stats["a"]["x"]["ci_high"]
    assert stats["a"]["y"]["n"] == 0 and math.isnan(stats["a"]["y"]["mean"])
    assert stats["b"]["x"] == {"mean": 5.0, "ci_low": 5.0, "ci_high": 5.0, "n": 1}


def test_write_report(tmp_path: Path) -> None:
    results = build_results(tmp_path)
    json_path, html_path = write_report(results, tmp_path)
    assert json_path == tmp_path / "report.json" and html_path == tmp_path / "report.html"

    data = json.loads(json_path.read_text())
    assert EvalResults.model_validate(data).brand == "acme"
    for key in PRODUCTS:
        for stats in data["aggregates"][key].values():
            if stats["n"]:
                assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    cand, base = data["aggregates"]["candidate"], data["aggregates"]["base"]
    assert cand["palette_delta_e"]["mean"] < base["palette_delta_e"]["mean"]
    assert data["gate"]["summary"]

    page = html_path.read_text()
    for model in results.models:
        assert model.label in page
    for prompt in results.prompts:
        assert prompt in page
    assert page.count("<img") == len(results.per_image)
    assert page.count("data:image/png;base64,") == len(results.per_image)
    # Self-contained: no external references of any kind.
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)
    assert "url(http" not in page and "@import" not in page
    assert "palette_delta_e" in page and "↓ lower is better" in page
    assert ("Promote" in page) and ("Do not promote" in page) == (not data["gate"]["passed"])


def test_report_missing_image_shows_placeholder(tmp_path: Path) -> None:
    results = build_results(tmp_path, seeds=(0,))
    (tmp_path / results.per_image[0].image).unlink()
    _, html_path = write_report(results.model_copy(update={"gate": None}), tmp_path / ".")
    page = html_path.read_text()
    assert "image missing" in page and "Promote" not in page


def test_results_are_validated(tmp_path: Path) -> None:
    results = build_results(tmp_path, seeds=(0,))
    data = results.model_dump()
    with pytest.raises(ValueError, match="relative"):
        ImageRow(model="a", prompt_index=0, seed=0, image="../x.png")
    with pytest.raises(ValueError, match="not one of"):
        EvalResults.model_validate({**data, "per_image": [{**data["per_image"][0], "model": "ghost"}]})
    with pytest.raises(ValueError, match="out of range"):
        EvalResults.model_validate({**data, "per_image": [{**data["per_image"][0], "prompt_index": 9}]})
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvaluationError, match="is a file"):
        write_report(results, tmp_path / "file")


def _first_champion_results(tmp_path: Path) -> EvalResults:
    """build_results without a champion: the gate judges the candidate against the base model."""
    results = build_results(tmp_path)
    rows = [r for r in results.per_image if r.model != "champion"]
    means = {k: {m: v["mean"] for m, v in stats.items()} for k, stats in aggregate(rows).items()}
    gate = evaluate_gate(means["candidate"], None, base=means["base"], per_image=rows, brand="ACME Drinks")
    return results.model_copy(
        update={
            "models": [m for m in results.models if m.key != "champion"],
            "per_image": rows,
            "set_metrics": {k: v for k, v in results.set_metrics.items() if k != "champion"},
            "gate": gate.to_dict(),
        }
    )


def test_report_explains_the_gate_in_plain_language(tmp_path: Path) -> None:
    results = _first_champion_results(tmp_path)
    assert results.gate is not None and results.gate["passed"], results.gate
    palette = next(r for r in results.gate["rules"] if r["rule"] == "palette_delta_e improve_by vs base")
    assert palette["explanation"].startswith(
        "The new adapter's product colours are closer to the ACME Drinks palette than the base model's on 9 "
        "images"
    )
    json_path, html_path = write_report(results, tmp_path)
    saved = json.loads(json_path.read_text())["gate"]["rules"]
    assert [r["explanation"] for r in saved] == [r["explanation"] for r in results.gate["rules"]]
    page = html_path.read_text()
    assert "Promote candidate" in page and "Compared with" in page
    assert html.escape(palette["explanation"]) in page  # in the decision box and in the rule table
    assert page.count("closer to the ACME Drinks palette") == 2
    assert f"{palette['pairs']} pairs" in page and "base model" in page
    assert "Not checked: there is no champion yet" in page  # skipped rules say why, in the table only
    assert "\n" not in results.gate["summary"]


def test_prefect_artifact_lists_explanations() -> None:
    from types import SimpleNamespace

    from brandtune.evaluation.gate import GateResult
    from flows.evaluate import gate_markdown

    gate = evaluate_gate({"palette_delta_e": 12.0, "technical_ok": 1.0}, None)  # no base: fails, says why
    markdown = gate_markdown(SimpleNamespace(gate=gate))
    assert markdown.startswith("## Gate\n\n- **fail** palette_delta_e improve_by vs base: Cannot judge:")
    assert "base model was not part of this evaluation" in markdown and "`no base model" in markdown
    assert isinstance(gate, GateResult) and markdown.count("- **") == len(gate.rules)


def _masked_dataset(home: Path, fingerprint: str = "f1ab2c3d4e5f60718293") -> Path:
    """A dataset folder written by hand per the issue-16 contract: three photos (one 2:3 portrait), the first
    two with a ``<sha>.mask.png`` beside them (255 product, 0 background), the third without."""
    from PIL import Image

    from brandtune.fsutil import sha256_file

    folder = home / "datasets" / "acme" / fingerprint
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"resolution": 64, "images": []}))
    (folder.parent / "LATEST").write_text(fingerprint)
    rows = []
    for i, (w, h) in enumerate([(64, 64), (48, 80), (64, 64)]):
        name = f"{i:020d}"
        render_scene(Scene(ACME_PRODUCT, SETTINGS[i], i), 64).resize((w, h)).save(folder / f"{name}.png")
        row = {"file_name": f"{name}.png", "text": "a photo of acme bottle", "mask_file_name": None}
        if i < 2:
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 255
            Image.fromarray(mask, "L").save(folder / f"{name}.mask.png")
            row["mask_file_name"] = f"{name}.mask.png"
        rows.append(row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = [  # the sha256 of each file, as ingest records them (the layout reader checks them)
        {
            "file_name": r["file_name"],
            "caption": r["text"],
            "sha256": sha256_file(folder / r["file_name"]),
            "mask": r["mask_file_name"]
            and {"file": r["mask_file_name"], "sha256": sha256_file(folder / r["mask_file_name"])},
        }
        for r in rows
    ]
    (folder / "manifest.json").write_text(json.dumps({"resolution": 64, "images": images}))
    Image.new("RGB", (32, 32)).save(
        folder / "masks.png"
    )  # ingest's contact sheet: in the folder, not a photo
    return folder


def test_report_shows_brand_photos_with_masks(tmp_path: Path) -> None:
    from PIL import Image

    from brandtune.config import load_brand
    from brandtune.evaluation.job import _brand_photos
    from brandtune.settings import Settings

    settings = Settings(home=tmp_path / "home")
    folder = _masked_dataset(settings.home)
    out = tmp_path / "report"
    refs, shown, note = _brand_photos(load_brand("acme"), folder.name, out, settings)
    assert len(refs) == 3  # the mask files are not reference photos
    assert [(p.mask, p.source) for p in shown] == [
        (True, "00000000000000000000.png"),
        (True, "00000000000000000001.png"),
        (False, "00000000000000000002.png"),
    ]
    assert shown[0].coverage == pytest.approx(1 / 6, abs=0.01)  # half the height x a third of the width
    assert "the one the candidate was trained on" in note and "2 with a mask" in note
    # the overlay: product pixels as they are, background dimmed to 30%
    photo = np.asarray(Image.open(folder / shown[1].source), dtype=float)
    shown_px = np.asarray(Image.open(out / shown[1].image), dtype=float)
    assert shown_px.shape == photo.shape == (80, 48, 3)
    np.testing.assert_allclose(shown_px[40, 24], photo[40, 24], atol=1)
    np.testing.assert_allclose(shown_px[2, 2], photo[2, 2] * 0.3, atol=1)

    results = build_results(out).model_copy(update={"brand_photos": shown, "brand_photos_note": note})
    _, html_path = write_report(results, out)
    page = html_path.read_text()
    section = page[page.index("<h2>Brand photos</h2>") : page.index("<h2>Side by side</h2>")]
    assert section.count("data:image/png;base64,") == 3
    assert "mask, 16% product" in section and "no mask" in section and "background" in section
    assert page.count("data:image/png;base64,") == len(results.per_image) + 3
    assert EvalResults.model_validate_json((out / "report.json").read_text()).brand_photos == shown

    # a candidate trained on a dataset that is not here: the latest is shown, and the note says so
    _, _, latest = _brand_photos(load_brand("acme"), "0badc0ffee", tmp_path / "r2", settings)
    assert "the brand's latest" in latest and "0badc0ffee is not here" in latest
    # no dataset at all: one line, no photos
    empty = Settings(home=tmp_path / "empty")
    refs, shown, note = _brand_photos(load_brand("acme"), "0badc0ffee", tmp_path / "r3", empty)
    assert (refs, shown) == ([], []) and note.startswith("No dataset 0badc0ffee of acme here")
    _, html_path = write_report(
        build_results(tmp_path / "r3").model_copy(update={"brand_photos_note": note}), tmp_path / "r3"
    )
    page = html_path.read_text()
    section = page[page.index("<h2>Brand photos</h2>") : page.index("<h2>Side by side</h2>")]
    assert "No dataset 0badc0ffee of acme here" in section and "<img" not in section


def test_report_lists_images_by_aspect(tmp_path: Path) -> None:
    results = build_results(tmp_path, seeds=(0,))
    rows = [r.model_copy(update={"aspect": "1:1"}) for r in results.per_image]
    rows += [r.model_copy(update={"aspect": "2:3", "image": r.image}) for r in results.per_image]
    sampler = results.sampler.model_copy(update={"sizes": {"1:1": [64, 64], "2:3": [48, 80]}})
    _, html_path = write_report(
        results.model_copy(update={"per_image": rows, "sampler": sampler, "aggregates": {}}), tmp_path
    )
    page = html_path.read_text()
    assert "1:1 64x64, 2:3 48x80" in page
    assert page.count("seed 0 · 2:3</figcaption>") == len(results.per_image)
    # the gate pairs images by prompt, seed and aspect: twice as many pairs as without aspects
    from brandtune.evaluation.gate import _pairs

    assert len(_pairs(rows, "champion", "palette_delta_e")) == 2 * len(
        _pairs(results.per_image, "champion", "palette_delta_e")
    )
