"""``brandtune evaluate``: judge a candidate adapter against the champion and the base; the gate promotes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from brandtune.cli._common import console, given
from brandtune.config import DeviceName, DtypeName, job_config

#: Where ``--steps`` goes in an EvalConfig (its sampler settings).
STEPS_KEY = "sampler.num_inference_steps"


def add_commands(app: typer.Typer) -> None:
    """Add ``evaluate`` to the ``brandtune`` app."""
    app.command("evaluate")(evaluate_cmd)


def evaluate_cmd(
    ctx: typer.Context,
    brand: Annotated[str, typer.Option("--brand", "-b", help="Brand slug.")],
    candidate: Annotated[str, typer.Option(help="Version number or alias to judge.")] = "candidate",
    against: Annotated[
        str, typer.Option(help="Alias or version to compare with ('none': absolute rules only).")
    ] = "champion",
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Seeds (repeatable; default 0 1 2 3).")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Denoising steps. Default: the base family's (SD/SDXL 20, FLUX/SD3 28)."),
    ] = None,
    device: Annotated[
        DeviceName, typer.Option(help="Where to sample and score ('auto': the CUDA GPU when there is one).")
    ] = "auto",
    dtype: Annotated[
        DtypeName,
        typer.Option(
            help="Weight dtype of the pipelines ('auto': bfloat16 or float16 on a GPU, float32 on the CPU)."
        ),
    ] = "auto",
    config: Annotated[
        Path | None,
        typer.Option(
            help="EvalConfig YAML (gate rules, sampler, clip_model/dino_model folders); flags override."
        ),
    ] = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Report only; never move @champion.")
    ] = False,
    output: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
) -> None:
    """Compare a candidate adapter with the champion and the base; promote it when the gate passes."""
    from brandtune.config import EvalConfig
    from brandtune.evaluation.job import evaluate

    flags = given(
        ctx,
        {
            "brand": ("brand", brand),
            "candidate": ("candidate", candidate),
            "against": ("against", None if against.lower() == "none" else against),
            "seeds": ("seeds", seeds),
            "steps": (STEPS_KEY, steps),
            "device": ("device", device),
            "dtype": ("dtype", dtype),
            "no_promote": ("promote", not no_promote),
            "output": ("output_dir", output),
        },
    )
    outcome = evaluate(job_config(EvalConfig, config, flags))
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
        if rule.explanation:
            console.print(f"          {rule.explanation}", highlight=False, style="dim")
    moved = "promoted to @champion" if outcome.promoted else "@champion unchanged"
    console.print(f"candidate v{outcome.candidate_version}: {moved}")
    console.print(f"report: {outcome.report_html}")
