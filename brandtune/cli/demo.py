"""``brandtune demo``: the whole pipeline on the sample brand, through the Prefect flows, and where to look.

This is the one command that runs ``flows`` in-process (``retrain``, then ``generate`` twice for the before/after
sheet); the library never imports them. The sheet itself is :func:`brandtune.demo.before_after`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brandtune.cli._common import BrandOpt, console

if TYPE_CHECKING:
    from brandtune.config import BrandSpec
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)


def add_commands(app: typer.Typer) -> None:
    """Add ``demo`` to the ``brandtune`` app."""
    app.command("demo")(demo_cmd)


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


def demo_cmd(
    brand: BrandOpt = "acme",
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: what the base model recommends).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Train a new version even when nothing changed since the last one."),
    ] = False,
) -> None:
    """Run the whole pipeline on the built-in sample brand and print where to look."""
    from brandtune.config import load_brand
    from brandtune.settings import Settings

    load_brand(brand)  # a wrong brand is one error line before Prefect starts
    # Prefect keeps its local state beside brandtune's unless told otherwise; the first flow run of a process
    # starts a temporary API server, which can be slow on a busy machine.
    os.environ.setdefault("PREFECT_HOME", str(Settings.from_env().home / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no calls home from the local API
    result = run_demo(brand, steps, say=lambda text: console.print(text, highlight=False), force=force)
    _print_summary(result, brand, Settings.from_env())


def _print_summary(result: DemoResult, brand: str, settings: Settings) -> None:
    """Where to look: the sheet, the campaign, the evaluation, the gate, the dataset, MLflow and Prefect."""
    datasets = settings.datasets_dir / brand / result.dataset
    console.print("\n[bold green]done.[/] Open these:")
    console.print(f"  before/after: {result.before_after}")
    console.print(f"  campaign:     {result.gallery}")
    console.print(f"  evaluation:   {settings.home / 'evaluations' / brand} (report.html of the newest run)")
    console.print(f"  gate:         {result.gate}", highlight=False)
    if result.gate_explanation:
        console.print(f"                {result.gate_explanation}", highlight=False)
    console.print(f"  dataset:      {datasets}")
    console.print(f"  ingest report: {datasets / 'report.json'}")
    if result.trained:
        state = " (now @champion)" if result.promoted else ""
    else:
        state = " (unchanged: nothing trained; `brandtune demo --force` trains a new version)"
    console.print(
        f"  MLflow:       training run {result.mlflow_run_id}, model {brand}-lora version {result.version}"
        f"{state}; browse with `make mlflow-ui`"
    )
    console.print("  Prefect:      the flow runs and their artifacts: `make ui`")


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
    from brandtune.config import load_brand
    from brandtune.demo import before_after
    from brandtune.registry import list_versions
    from brandtune.settings import Settings

    settings = Settings.from_env()
    brand = load_brand(brand_name)
    retrained = _retrain(brand, steps, force, say)
    model, shown = _campaign_model(retrained)
    if model != "champion":
        say(
            f"the gate held version {model} back and there is no champion yet: generating from version {model}"
        )
    out = settings.home / "campaigns" / brand.name / "demo"
    campaign, before = _campaigns(brand, model, shown, out)
    sheet = before_after(Path(before["output_dir"]), Path(campaign["output_dir"]), out / "before_after.png")
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


def _retrain(brand: BrandSpec, steps: int | None, force: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the ``retrain`` flow with the demo's settings, saying what it does and when nothing changed."""
    from brandtune.config import brand_dir
    from flows._params import TrainingParams
    from flows.retrain import retrain_flow

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
    return retrained


def _campaigns(brand: BrandSpec, model: str, shown: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the ``generate`` flow twice, same prompt, settings and seeds: from ``model``, then from the base model.

    Returns:
        The two flows' results: the adapter's campaign and the base model's.
    """
    from flows._params import GenerationParams
    from flows.generate import generate_flow

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
    return campaign, before


def _campaign_model(retrained: dict[str, Any]) -> tuple[str, str]:
    """The model to generate from (``champion``, or the version when there is no champion) and its version."""
    if retrained["promoted"]:
        return "champion", str(retrained["version"])
    if retrained["champion_before"]:
        return "champion", str(retrained["champion_before"])
    return str(retrained["version"]), str(retrained["version"])
