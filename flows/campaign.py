"""The ``campaign`` flow: a brand's standard campaigns (brand.yaml ``campaigns:``) from the released model.

It runs on a schedule (``scheduled-campaign`` in prefect.yaml, after the weekly retrain) and whenever @champion
changes (the ``brandtune.champion.changed`` event triggers it with the new version). A campaign already generated
from the same version and settings is not generated again; the summary says so and links the earlier gallery.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field

from brandtune.campaigns import CampaignRun, run_campaign
from brandtune.config import GenerateConfig, field_type, load_brand
from brandtune.registry import model_name
from brandtune.settings import Settings
from flows._artifacts import artifact_key, markdown_table, publish, version_link
from flows._params import BrandSlug


@task(name="standard-campaign", cache_policy=NO_CACHE, log_prints=False)
def campaign_task(
    brand: str, name: str, model: str, reason: str, batch_size: int | None, device: str, dtype: str
) -> CampaignRun:
    """Generate one standard campaign (or find it already generated from this version)."""
    run = run_campaign(
        brand, name, model=model, reason=reason, batch_size=batch_size, device=device, dtype=dtype
    )
    get_run_logger().info("%s", run.summary())
    return run


@flow(name="campaign", log_prints=False, validate_parameters=True)
def campaign_flow(
    brand: BrandSlug = "acme",
    campaigns: Annotated[
        list[str],
        Field(
            description="Names of the brand's standard campaigns (brand.yaml campaigns:). Empty: all of them."
        ),
    ] = [],  # noqa: B006 - Prefect copies parameter defaults
    model: Annotated[
        str,
        Field(
            min_length=1,
            description="Adapter to generate from: an alias (champion, candidate) or a version number. It is "
            "resolved once, so every campaign of this run uses the same version.",
        ),
    ] = "champion",
    reason: Annotated[
        str,
        Field(description="Why this run happens, recorded with each campaign (the schedule, or the event)."),
    ] = "on demand",
    batch_size: field_type(GenerateConfig, "batch_size", optional=True) = None,
    device: field_type(GenerateConfig, "device") = "auto",
    dtype: field_type(GenerateConfig, "dtype") = "auto",
) -> dict[str, Any]:
    """Generate a brand's standard campaigns from its released model.

    Every campaign listed under `campaigns:` in the brand's brand.yaml (or only those named here) is generated
    from the chosen model, normally @champion, into a dated folder named after the version:
    campaigns/<brand>/<campaign>/<date>-v<version>-<key>/. Each is logged to MLflow as a `campaign` run linked to
    that model version, with its gallery, manifest and images.

    A campaign already generated from the same version with the same settings is not generated again: this run
    says so and links the earlier gallery. So the run after a promotion makes new images, and a scheduled run with
    nothing new costs seconds.

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml (e.g. acme).
        campaigns: Names of the brand's standard campaigns to generate; empty: all of them.
        model: Adapter to generate from: an alias (champion, candidate) or a version number.
        reason: Why this run happens, recorded with each campaign (the schedule, or the event that started it).
        batch_size: Images per pipeline call; empty: the generation default.
        device: Where to sample: cuda, cpu, or auto (the GPU when the worker has one). Part of the campaign's key:
            images made on another device are another campaign run.
        dtype: Weight dtype: float32, float16, bfloat16, or auto (bf16 or fp16 on a GPU, float32 on the CPU).
    """
    from brandtune.config import resolve_placement
    from brandtune.registry import fetch, model_uri

    resolve_placement(device, dtype)  # device: cuda without a GPU fails here, before anything is fetched
    spec = load_brand(brand)
    names = campaigns or [c.name for c in spec.campaigns]
    for name in names:
        spec.campaign(name)  # every name is checked before anything is generated
    if not names:
        get_run_logger().warning(
            "brand %s has no campaigns: in its brand.yaml; nothing to generate", spec.name
        )
    # one version for the whole run, even if @champion moves while it generates
    version = fetch(model_uri(spec.name, model.lstrip("@"))).version.version if names else ""
    runs = [campaign_task(spec.name, name, version, reason, batch_size, device, dtype) for name in names]
    _publish(Settings.from_env(), spec.name, model, version, reason, runs)
    return {
        "brand": spec.name,
        "version": version,
        "campaigns": [
            {
                "campaign": r.campaign,
                "output_dir": str(r.output_dir),
                "gallery": str(r.gallery),
                "images": r.images,
                "generated": r.generated,
                "reused": r.reused,
                "mlflow_run_id": r.mlflow_run_id,
            }
            for r in runs
        ],
    }


def _publish(
    env: Settings, brand: str, model: str, version: str, reason: str, runs: list[CampaignRun]
) -> None:
    """A link artifact per gallery and one summary: campaign x setting counts and what was reused."""
    for run in runs:
        create_link_artifact(
            run.gallery.resolve().as_uri(),
            link_text=f"{run.campaign} gallery (v{run.version})",
            key=artifact_key("campaign", brand, run.campaign, "gallery"),
        )
    settings = sorted({s for r in runs for s in r.counts})
    table = [
        {
            "campaign": f"[{r.campaign}]({r.gallery.resolve().as_uri()})",
            **{s: r.counts.get(s, 0) for s in settings},
            "images": r.images,
            "this run": "already generated: nothing new" if r.reused else f"{r.generated} generated",
        }
        for r in runs
    ]
    publish(
        "campaign",
        brand,
        f"Standard campaigns for {brand}",
        [
            ("model", version_link(env, model_name(brand), version) + f" (asked for {model})"),
            ("reason", reason),
            ("campaigns", str(len(runs))),
            ("generated now", str(sum(r.generated for r in runs))),
        ],
        extra="## Images per setting\n\n" + markdown_table(table),
    )
