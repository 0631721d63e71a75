"""The end-to-end demo on the sample brand: ingest, train, register, evaluate (gate), generate, before/after."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brandtune.config import brand_dir, load_brand
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

DEMO_STEPS = 300
DEMO_LEARNING_RATE = 2e-3
DEMO_BATCH = 8


@dataclass(frozen=True)
class DemoResult:
    dataset: Path
    mlflow_run_id: str
    version: str
    gate: str
    promoted: bool
    report: Path
    gallery: Path
    before_after: Path


def run_demo(
    brand_name: str = "acme", steps: int = DEMO_STEPS, say: Callable[[str], None] = logger.info
) -> DemoResult:
    """Run every stage once on ``brand_name`` and return where each result is."""
    from brandtune.config import IngestConfig
    from brandtune.evaluation.job import EvalConfig, evaluate
    from brandtune.generation import GenerateConfig, generate
    from brandtune.ingest import ingest
    from brandtune.registry import register
    from brandtune.sampling import SamplerConfig
    from brandtune.training import TrainConfig
    from brandtune.training.launch import launch

    settings = Settings.from_env()
    brand = load_brand(brand_name)
    say(f"1/5 ingest {brand_dir(brand.name) / 'photos'}")
    data = ingest(
        brand, brand_dir(brand.name) / "photos", IngestConfig.for_brand(brand), settings, progress=True
    )
    say(
        f"    dataset {data.fingerprint}: {data.num_images} images ({data.num_rejected} rejected) in {data.path}"
    )
    say(f"2/5 train a LoRA on {brand.base_model} for {steps} steps")
    cfg = TrainConfig(
        brand=brand.name,
        dataset=data.fingerprint,
        max_train_steps=steps,
        learning_rate=DEMO_LEARNING_RATE,
        train_batch_size=DEMO_BATCH,
        checkpointing_steps=100,
        resume="latest",
    )
    trained = launch(cfg, on_line=lambda line: logger.debug("%s", line))
    say(f"    adapter {trained['adapter_dir']} (MLflow run {trained['mlflow_run_id']})")
    say("3/5 register it as a new version with @candidate")
    version = register(brand.name, trained["mlflow_run_id"], settings=settings)
    say(f"    {version.name} version {version.version}")
    say("4/5 evaluate the candidate against @champion and the base model; the gate decides")
    outcome = evaluate(EvalConfig(brand=brand.name, candidate=version.version), settings)
    say(f"    gate: {outcome.gate.summary()}")
    say(f"    report: {outcome.report_html}")
    model = "champion" if outcome.promoted or outcome.champion_version else version.version
    say(f"5/5 generate a campaign from {'@champion' if model == 'champion' else 'version ' + model}")
    out = settings.home / "campaigns" / brand.name / "demo"
    job = GenerateConfig(
        brand=brand.name,
        prompt="a photo of {trigger} {subject}",
        settings=list(brand.settings),
        variations=4,
        model=model,
        output_dir=out / "adapter",
        sampler=SamplerConfig(),
    )
    campaign = generate(job, settings, progress=True)
    before = generate(
        job.model_copy(update={"model": "base", "output_dir": out / "base"}), settings, progress=True
    )
    sheet = before_after(before.output_dir, campaign.output_dir, out / "before_after.png")
    return DemoResult(
        data.path,
        trained["mlflow_run_id"],
        version.version,
        outcome.gate.summary(),
        outcome.promoted,
        outcome.report_html,
        campaign.gallery,
        sheet,
    )


def before_after(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """One PNG: per setting, the base model's images (left) next to the adapter's (right), same seeds."""
    import json

    from PIL import Image, ImageDraw

    from brandtune.generation import _save_png

    rows = json.loads((adapter_dir / "manifest.json").read_text())["images"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    per = max(sum(r["setting"] == s for r in rows) for s in settings)
    cell, gap, label, left = 96, 12, 20, 90
    width = left + 2 * per * cell + gap
    sheet = Image.new("RGB", (width, label + len(settings) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((left + 4, 4), "base model (no adapter)", fill=(40, 40, 40))
    draw.text((left + per * cell + gap + 4, 4), "with the brand adapter", fill=(40, 40, 40))
    for y, setting in enumerate(settings):
        mine = [r for r in rows if r["setting"] == setting]
        draw.text((4, label + y * cell + cell // 2 - 12), setting, fill=(40, 40, 40))
        draw.text(
            (4, label + y * cell + cell // 2 + 2),
            f"seeds {mine[0]['seed']}-{mine[-1]['seed']}",
            fill=(110, 110, 110),
        )
        for x, r in enumerate(mine):
            for side, folder in enumerate((base_dir, adapter_dir)):
                with Image.open(folder / r["file"]) as img:
                    tile = img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                sheet.paste(tile, (left + side * (per * cell + gap) + x * cell, label + y * cell))
    _save_png(sheet, out)
    return out
