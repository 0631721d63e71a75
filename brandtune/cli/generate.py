"""``brandtune generate``: campaign images from a brand's adapter, or a manifest made again bit for bit."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from brandtune.cli._common import console, given
from brandtune.config import DeviceName, DtypeName, SchedulerName, job_config


def add_commands(app: typer.Typer) -> None:
    """Add ``generate`` to the ``brandtune`` app."""
    app.command("generate", cls=GenerateCommand)(generate_cmd)


def spread_values(args: Iterable[str], options: frozenset[str]) -> list[str]:
    """Give every value after a multi-value option its own flag: ``--settings a b`` -> ``--settings a --settings b``.

    click has no ``nargs='+'`` for options; this rewrite lets one flag take several values (up to the next token
    that starts with ``-``, or ``--``) while the option stays an ordinary repeatable one. Only for commands whose
    positional arguments, if any, come before such an option.
    """
    out: list[str] = []
    flag: str | None = None  # the multi-value option whose values are being read
    own_value = False  # the next token is the flag's own value (``--settings a``, not ``--settings=a``)
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            out.append(token)
            out.extend(tokens)
            break
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            flag = name if name in options else None
            own_value = flag is not None and "=" not in token
        elif flag is not None and not own_value:
            out.append(flag)
        else:
            own_value = False
        out.append(token)
    return out


class GenerateCommand(TyperCommand):
    """``brandtune generate``: ``--settings`` takes several values, and the --reproduce rules are checked while
    parsing (so a usage error never starts a model load, and parsing alone tells a good command line from a bad
    one)."""

    multi_value_options = frozenset({"--settings"})
    #: Job flags that --reproduce ignores (the manifest fixes them), so giving one with it is an error.
    job_options = (
        "prompt", "settings", "variations", "model", "steps", "guidance", "scheduler", "seed", "negative_prompt",
        "init_image", "config", "overwrite", "device", "dtype",
    )  # fmt: skip

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, spread_values(args, self.multi_value_options))
        if not ctx.resilient_parsing:
            _check_generate_flags(ctx, self.job_options)
        return rest


def _check_generate_flags(ctx: typer.Context, job_options: tuple[str, ...]) -> None:
    """--brand and --prompt are needed for a new job (unless its --config file gives them); --reproduce needs
    --output and none of the job flags."""
    params: dict[str, Any] = ctx.params
    if params.get("reproduce") is None:
        if params.get("config") is not None:  # the file may name them; the config's validation says if not
            return
        for name, flag in (("brand", "'--brand' / '-b'"), ("prompt", "'--prompt'")):
            if params.get(name) is None:
                ctx.fail(f"Missing option {flag} (needed unless --reproduce names a manifest.json).")
        return
    if params.get("output") is None:
        ctx.fail("Missing option '--output': --reproduce writes the images it makes again into that folder.")
    sources = {name: getattr(ctx.get_parameter_source(name), "name", None) for name in job_options}
    given_flags = [
        f"--{name.replace('_', '-')}" for name, source in sources.items() if source == "COMMANDLINE"
    ]
    if given_flags:
        ctx.fail(
            f"{', '.join(given_flags)} cannot be combined with --reproduce: the manifest records the whole job "
            "(drop them, or start a new job without --reproduce)."
        )


def generate_cmd(
    ctx: typer.Context,
    brand: Annotated[
        str | None,
        typer.Option("--brand", "-b", help="Brand slug; optional with --reproduce (the manifest names it)."),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt; {trigger}/{subject} are filled in.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--settings",
            metavar="<setting>...",
            help='Setting keys of brand.yaml or phrases: several after one flag (--settings beach "in a snowy '
            'cabin"), or the flag repeated.',
        ),
    ] = None,
    variations: Annotated[int, typer.Option(help="Images per setting.")] = 10,
    model: Annotated[str, typer.Option(help="Alias, version number, or 'base'.")] = "champion",
    steps: Annotated[
        int | None,
        typer.Option(help="Denoising steps. Default: the base family's (SD/SDXL 20, FLUX/SD3 28)."),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="Guidance scale. Default: the base family's (SD/SDXL 4, FLUX 3.5, SD3 5)."),
    ] = None,
    scheduler: Annotated[
        SchedulerName,
        typer.Option(
            help="Sampler ('default': the model's own; 'auto': ddim on SD/SDXL, the model's own on FLUX/SD3); "
            "recorded in the manifest."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the first variation.")] = 0,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    init_image: Annotated[Path | None, typer.Option(help="Product photo for img2img variations.")] = None,
    device: Annotated[
        DeviceName,
        typer.Option(
            help="Where to sample ('auto': the CUDA GPU when there is one); recorded in the manifest."
        ),
    ] = "auto",
    dtype: Annotated[
        DtypeName,
        typer.Option(
            help="Weight dtype ('auto': bfloat16 or float16 on a GPU, float32 on the CPU); recorded in the manifest."
        ),
    ] = "auto",
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output folder. Re-use it to resume a job: images whose sha256 matches the manifest are kept, "
            "the rest are made again; other model or sampler settings are refused."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Make every image in --output again and rewrite its manifest, even if it was made with other "
            "settings.",
        ),
    ] = False,
    reproduce: Annotated[
        Path | None,
        typer.Option(help="A manifest.json to make again bit for bit, into --output (needs nothing else)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="GenerateConfig YAML; flags override it."),
    ] = None,
) -> None:
    """Generate campaign images: prompt x settings x variations from the brand's champion adapter."""
    from brandtune.config import GenerateConfig
    from brandtune.generation import generate
    from brandtune.generation import reproduce as reproduce_manifest

    if reproduce is not None:  # GenerateCommand checked that --output is given and no job flag is
        assert output is not None
        paths = reproduce_manifest(reproduce, output, brand=brand)
        console.print(f"[bold green]reproduced[/] {len(paths)} images into {output}")
        return
    flags = given(
        ctx,
        {
            "brand": ("brand", brand),
            "prompt": ("prompt", prompt),
            "settings": ("settings", settings or []),
            "variations": ("variations", variations),
            "model": ("model", model),
            "seed": ("seed", seed),
            "output": ("output_dir", output),
            "init_image": ("init_image", init_image),
            "device": ("device", device),
            "dtype": ("dtype", dtype),
            "steps": ("sampler.num_inference_steps", steps),
            "guidance": ("sampler.guidance_scale", guidance),
            "scheduler": ("sampler.scheduler", scheduler),
            "negative_prompt": ("sampler.negative_prompt", negative_prompt),
        },
    )
    result = generate(job_config(GenerateConfig, config, flags), overwrite=overwrite)
    console.print(f"[bold green]campaign[/] {result.generated} generated, {result.skipped} already there")
    console.print(f"  gallery:  {result.gallery}")
    console.print(f"  manifest: {result.manifest}")
    for sheet in result.contact_sheets:
        console.print(f"  sheet:    {sheet}")
