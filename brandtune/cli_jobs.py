"""``brandtune evaluate`` and ``brandtune generate``: the evaluation gate and campaign jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def add_commands(app: typer.Typer) -> None:
    """Register the job commands on the main app."""
    app.command("evaluate")(evaluate_cmd)
    app.command("generate")(generate_cmd)


def evaluate_cmd(
    brand: Annotated[str, typer.Option("--brand", "-b", help="Brand slug.")],
    candidate: Annotated[str, typer.Option(help="Version number or alias to judge.")] = "candidate",
    against: Annotated[
        str, typer.Option(help="Alias or version to compare with ('none': absolute rules only).")
    ] = "champion",
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Seeds (repeatable; default 0 1 2 3).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    config: Annotated[
        Path | None, typer.Option(help="EvalConfig YAML (gate rules, sampler); flags override.")
    ] = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Report only; never move @champion.")
    ] = False,
    output: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
) -> None:
    """Compare a candidate adapter with the champion and the base; promote it when the gate passes."""
    from brandtune.config import load_yaml_model
    from brandtune.evaluation.job import EvalConfig, evaluate

    overrides = {
        "brand": brand,
        "candidate": candidate,
        "against": None if against.lower() == "none" else against,
        "seeds": seeds or None,
        "num_inference_steps": steps,
        "promote": False if no_promote else None,
        "output_dir": output,
    }
    if config is not None:
        cfg = load_yaml_model(EvalConfig, config, overrides)
    else:
        from brandtune.cli import _validated

        cfg = _validated(
            EvalConfig, {k: v for k, v in overrides.items() if v is not None or k == "against"}, "flags"
        )
    outcome = evaluate(cfg)
    table = Table("model", *sorted(outcome.metrics["candidate"]))
    for key, metrics in outcome.metrics.items():
        table.add_row(
            key, *(f"{metrics.get(m, float('nan')):.3g}" for m in sorted(outcome.metrics["candidate"]))
        )
    console.print(table)
    colour = "green" if outcome.gate.passed else "red"
    console.print(f"[bold {colour}]gate[/] {outcome.gate.summary()}")
    for rule in outcome.gate.rules:
        console.print(f"  {rule.status:7} {rule.rule}: {rule.reason}", highlight=False)
    moved = "promoted to @champion" if outcome.promoted else "@champion unchanged"
    console.print(f"candidate v{outcome.candidate_version}: {moved}")
    console.print(f"report: {outcome.report_html}")


def generate_cmd(
    brand: Annotated[str, typer.Option("--brand", "-b", help="Brand slug.")],
    prompt: Annotated[str | None, typer.Option(help="Prompt; {trigger}/{subject} are filled in.")] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--settings", help="Setting keys or phrases (repeatable).")
    ] = None,
    variations: Annotated[int, typer.Option(help="Images per setting.")] = 10,
    model: Annotated[str, typer.Option(help="Alias, version number, or 'base'.")] = "champion",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    guidance: Annotated[float, typer.Option(help="Guidance scale.")] = 4.0,
    seed: Annotated[int, typer.Option(help="Seed of the first variation.")] = 0,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    init_image: Annotated[Path | None, typer.Option(help="Product photo for img2img variations.")] = None,
    output: Annotated[Path | None, typer.Option(help="Output folder (re-use it to resume a job).")] = None,
    reproduce: Annotated[Path | None, typer.Option(help="A manifest.json to make again bit for bit.")] = None,
) -> None:
    """Generate campaign images: prompt x settings x variations from the brand's champion adapter."""
    from brandtune.generation import GenerateConfig, generate
    from brandtune.generation import reproduce as reproduce_manifest

    if reproduce is not None:
        if output is None:
            raise typer.BadParameter("--reproduce needs --output DIR for the regenerated images")
        paths = reproduce_manifest(reproduce, output)
        console.print(f"[bold green]reproduced[/] {len(paths)} images into {output}")
        return
    if prompt is None:
        raise typer.BadParameter("--prompt is required (or --reproduce manifest.json)")
    from brandtune.cli import _validated

    cfg = _validated(
        GenerateConfig,
        {
            "brand": brand,
            "prompt": prompt,
            "settings": settings or [],
            "variations": variations,
            "model": model,
            "seed": seed,
            "output_dir": output,
            "init_image": init_image,
            "sampler": {
                "num_inference_steps": steps,
                "guidance_scale": guidance,
                "negative_prompt": negative_prompt,
            },
        },
        "flags",
    )
    result = generate(cfg)
    console.print(f"[bold green]campaign[/] {result.generated} generated, {result.skipped} already there")
    console.print(f"  gallery:  {result.gallery}")
    console.print(f"  manifest: {result.manifest}")
    for sheet in result.contact_sheets:
        console.print(f"  sheet:    {sheet}")
