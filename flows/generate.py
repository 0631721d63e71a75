"""The ``generate`` flow: campaign images from the live adapter, with a gallery to review them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from prefect import flow
from prefect.artifacts import create_link_artifact
from pydantic import Field

from brandtune.registry import model_name
from brandtune.settings import Settings
from flows._artifacts import artifact_key, publish, version_link
from flows._params import TIMEOUTS, BrandSlug, GenerationParams
from flows._tasks import generate_task

if TYPE_CHECKING:
    from brandtune.generation import GenerationResult


@flow(name="generate", log_prints=False, validate_parameters=True, timeout_seconds=TIMEOUTS.flow("generate"))
def generate_flow(
    brand: BrandSlug = "acme",
    prompt: Annotated[
        str,
        Field(description="What to show. {trigger} and {subject} are filled in from brand.yaml."),
    ] = "a photo of {trigger} {subject}",
    settings: Annotated[
        list[str],
        Field(
            description="Where to place the product: keys of brand.yaml's settings (beach, snow, kitchen, forest, "
            "city, studio for acme) or free phrases ('in a snowy cabin'). Empty: the prompt alone."
        ),
    ] = ["beach", "studio"],  # noqa: B006 - Prefect copies parameter defaults
    variations: Annotated[
        int, Field(ge=1, le=1000, description="Images per setting (different seeds).")
    ] = 10,
    model: Annotated[
        str,
        Field(
            min_length=1,
            description="Adapter: an alias (champion, candidate), a version number, or 'base' for no adapter.",
        ),
    ] = "champion",
    generation: GenerationParams = GenerationParams(),
) -> dict[str, Any]:
    """Generate campaign imagery for a brand.

    Makes `variations` images for every setting from the chosen adapter (normally @champion, what has passed
    evaluation). Every image is recorded in manifest.json with its prompt, seed, sampler and adapter version so it
    can be made again. Open the gallery linked in this run's artifacts to review them; contact sheets are in the
    same folder. Re-running into the same folder skips images already made.

    Args:
        brand: Brand slug: the folder under data/brands that holds brand.yaml (e.g. acme).
        prompt: What to show; {trigger} and {subject} are filled in from brand.yaml.
        settings: Where to place the product: keys of brand.yaml's settings (beach, snow, kitchen, forest, city,
            studio for acme) or free phrases such as 'in a snowy cabin'. Empty: the prompt alone.
        variations: Images per setting, each with its own seed.
        model: Adapter to use: an alias (champion, candidate), a version number, or 'base' for no adapter.
        generation: Sampler settings, seed, batch size and output folder.
    """
    env = Settings.from_env()
    config = generation.generate_config(brand, prompt, settings, variations, model)
    result, seconds = generate_task(config)
    _publish_campaign(env, brand, prompt, settings, model, result, seconds)
    return {
        "output_dir": str(result.output_dir),
        "gallery": str(result.gallery),
        "manifest": str(result.manifest),
        "generated": result.generated,
        "skipped": result.skipped,
        "model_version": result.model_version,
        "seconds": seconds,
    }


def _publish_campaign(
    env: Settings,
    brand: str,
    prompt: str,
    settings: list[str],
    model: str,
    result: GenerationResult,
    seconds: float,
) -> None:
    """The run's artifacts: a link to the gallery and a summary of what was asked for and what was made."""
    gallery = result.gallery.resolve().as_uri()
    create_link_artifact(
        gallery, link_text="campaign gallery", key=artifact_key("generate", brand, "gallery")
    )
    publish(
        "generate",
        brand,
        f"Campaign for {brand}",
        [
            ("prompt", prompt),
            ("settings", ", ".join(settings) or "(prompt alone)"),
            ("adapter", version_link(env, model_name(brand), result.model_version) + f" (asked for {model})"),
            ("images", f"{result.generated} generated, {result.skipped} already there"),
            ("gallery", f"[{result.gallery}]({gallery})"),
            ("manifest", f"`{result.manifest}`"),
            ("contact sheets", ", ".join(f"`{p.name}`" for p in result.contact_sheets) or "-"),
        ],
        [
            {"metric": "images_generated", "value": result.generated},
            {"metric": "images_skipped", "value": result.skipped},
            {"metric": "seconds", "value": round(seconds, 2)},
        ],
    )
