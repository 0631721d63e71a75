"""The end-to-end demo on the sample brand: ingest, train, register, evaluate (gate), generate, before/after."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brandtune.config import brand_dir, load_brand
from brandtune.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo's results are.

    Attributes:
        dataset: The dataset fingerprint.
        mlflow_run_id: The training run of ``version``.
        version: The version retrained (or, when nothing changed, the version that already had this training).
        gate: The gate's reason recorded on that version.
        promoted: Whether this run made it @champion.
        gallery: The campaign's gallery page.
        before_after: The base-vs-adapter sheet.
        trained: Whether this run trained (False: nothing changed since ``version``).
        message: When nothing was trained, the one line that says so.
        gate_explanation: The gate's decision in plain words, as recorded on that version.
    """

    dataset: str
    mlflow_run_id: str
    version: str
    gate: str
    promoted: bool
    gallery: Path
    before_after: Path
    trained: bool = True
    message: str = ""
    gate_explanation: str = ""


def run_demo(
    brand_name: str = "acme",
    steps: int | None = None,
    say: Callable[[str], None] = logger.info,
    force: bool = False,
) -> DemoResult:
    """Run ``retrain`` then ``generate`` through Prefect on ``brand_name`` and return where each result is.

    ``retrain`` is the whole chain: ingest, train, register as @candidate, evaluate against @champion and the base
    model, promote when the gate passes. The training takes the base model's recommended settings (for
    builtin:tiny: its shipped ``brandtune_training.json``); ``steps`` overrides the step count. When nothing
    changed since a registered version (same photos, settings and base), nothing is trained and that version is
    left as it is, unless ``force``. ``generate`` then makes a campaign from the champion (or from the new version
    when the gate held it back), and once more from the base model for a before/after sheet.
    """
    from flows._params import GenerationParams, TrainingParams
    from flows.generate import generate_flow
    from flows.retrain import retrain_flow

    settings = Settings.from_env()
    brand = load_brand(brand_name)
    say(
        f"retrain {brand.name}: ingest {brand_dir(brand.name) / 'photos'}, train "
        f"{f'{steps} steps' if steps else 'with the settings it recommends'} on {brand.base_model}, register, "
        "evaluate, promote if the gate passes"
    )
    retrained = retrain_flow(
        brand=brand.name, training=TrainingParams(max_train_steps=steps, checkpointing_steps=100), force=force
    )
    if not retrained["trained"]:
        v = retrained["version"]
        say(
            f"nothing changed: {brand.name}-lora v{v} was trained on exactly these photos and settings, so nothing "
            f"was trained and v{v} is untouched (`brandtune demo --force` trains a new version)"
        )
    model, shown = _campaign_model(retrained)
    if model != "champion":
        say(
            f"the gate held version {model} back and there is no champion yet: generating from version {model}"
        )
    out = settings.home / "campaigns" / brand.name / "demo"
    common = {
        "brand": brand.name,
        "prompt": "a photo of {trigger} {subject}",
        "settings": list(brand.settings),
        "variations": 4,
    }
    # one folder per version: a re-run keeps the images already there, which must be this version's
    campaign = generate_flow(
        model=model, generation=GenerationParams(output_dir=str(out / f"adapter-v{shown}")), **common
    )
    before = generate_flow(model="base", generation=GenerationParams(output_dir=str(out / "base")), **common)
    sheet = before_after(Path(before["output_dir"]), Path(campaign["output_dir"]), out / "before_after.png")
    from brandtune.registry import list_versions

    tags = next(
        (v.tags for v in list_versions(brand.name, settings=settings) if v.version == retrained["version"]),
        {},
    )
    return DemoResult(
        retrained["dataset"],
        retrained["mlflow_run_id"],
        retrained["version"],
        tags.get("brandtune.gate_reason", ""),
        retrained["promoted"],
        Path(campaign["gallery"]),
        sheet,
        trained=retrained["trained"],
        message=retrained.get("message") or "",
        gate_explanation=tags.get("brandtune.gate_explanation", ""),
    )


def _campaign_model(retrained: dict[str, Any]) -> tuple[str, str]:
    """The model to generate from (``champion``, or the version when there is no champion) and its version."""
    if retrained["promoted"]:
        return "champion", str(retrained["version"])
    if retrained["champion_before"]:
        return "champion", str(retrained["champion_before"])
    return str(retrained["version"]), str(retrained["version"])


LABEL_FONT_SIZE = 12  # px; the before/after sheet's labels


def before_after(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """One PNG: per setting, the base model's images (left) next to the adapter's (right), same seeds."""
    import json

    from PIL import Image, ImageDraw, ImageFont

    from brandtune.generation import _save_png

    rows = json.loads((adapter_dir / "manifest.json").read_text())["images"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    per = max(sum(r["setting"] == s for r in rows) for s in settings)
    cell, gap, label, left = 96, 12, 20, 90
    width = left + 2 * per * cell + gap
    sheet = Image.new("RGB", (width, label + len(settings) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    # Pillow's bundled TrueType font (the bitmap default drops spaces: "noadapter")
    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    draw.text((left + 4, 4), "base model (no adapter)", fill=(40, 40, 40), font=font)
    draw.text((left + per * cell + gap + 4, 4), "with the brand adapter", fill=(40, 40, 40), font=font)
    for y, setting in enumerate(settings):
        mine = [r for r in rows if r["setting"] == setting]
        draw.text((4, label + y * cell + cell // 2 - 12), setting, fill=(40, 40, 40), font=font)
        draw.text(
            (4, label + y * cell + cell // 2 + 2),
            f"seeds {mine[0]['seed']}-{mine[-1]['seed']}",
            fill=(110, 110, 110),
            font=font,
        )
        for x, r in enumerate(mine):
            for side, folder in enumerate((base_dir, adapter_dir)):
                with Image.open(folder / r["file"]) as img:
                    tile = img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                sheet.paste(tile, (left + side * (per * cell + gap) + x * cell, label + y * cell))
    _save_png(sheet, out)
    return out
