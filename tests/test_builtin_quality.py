"""Behavioural tests of the shipped, pretrained builtin:tiny: it is what builtin:tiny resolves to, and it follows
the colour named in a caption.

These run the real model on fixed prompts and seeds. The threshold was set from measurements of the shipped weights
(32 of 32 right; see docs/builtin-tiny.md) with a wide margin; it checks behaviour, not exact pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from brandtune.evaluation.imageprep import as_rgb_array
from brandtune.models import load_base_pipeline, resolve_base
from brandtune.models.builtin import builtin_spec, shipped_dir
from brandtune.models.sampling import sample_images
from brandtune.synthetic import COLOURS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Colours asked for in the caption-following test (chance level: 1 / len).
ASKED_COLOURS = ("red", "blue", "green", "yellow")
COLOUR_SEEDS = range(8)
#: Measured on the shipped weights: see docs/builtin-tiny.md.
MIN_COLOUR_ACCURACY = 0.75


@pytest.fixture(scope="module")
def base_pipe() -> Any:
    if shipped_dir(builtin_spec("builtin:tiny")) is None:
        pytest.fail(
            "brandtune/assets/builtin_tiny/ is missing: the pretrained weights must ship with the package"
        )
    return load_base_pipeline(resolve_base("builtin:tiny"))


def classify_colour(image: Any, names: Sequence[str]) -> str:
    """The named colour that the most saturated pixels of ``image`` are nearest to (CIEDE2000)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab = rgb2lab(as_rgb_array(image)).reshape(-1, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    lab = lab[chroma > 25] if (chroma > 25).sum() >= 8 else lab
    refs = rgb2lab(np.array([[COLOURS[n] for n in names]], dtype=np.float64) / 255.0)[0]  # (K, 3)
    dist = np.stack([deltaE_ciede2000(lab, np.broadcast_to(ref, lab.shape)) for ref in refs], axis=1)
    votes = np.bincount(dist.argmin(axis=1), minlength=len(names))
    return names[int(votes.argmax())]


def test_base_follows_colour_in_captions(base_pipe: Any) -> None:
    prompts = [f"a photo of a {c} mug in a studio" for c in ASKED_COLOURS for _ in COLOUR_SEEDS]
    seeds = [s for _ in ASKED_COLOURS for s in COLOUR_SEEDS]
    images = sample_images(base_pipe, prompts, seeds)
    asked = [c for c in ASKED_COLOURS for _ in COLOUR_SEEDS]
    got = [classify_colour(img, ASKED_COLOURS) for img in images]
    accuracy = float(np.mean([a == g for a, g in zip(asked, got, strict=True)]))
    print(f"colour accuracy {accuracy:.2f} (chance {1 / len(ASKED_COLOURS):.2f}); got {got}")
    assert accuracy >= MIN_COLOUR_ACCURACY, f"colour accuracy {accuracy:.2f} < {MIN_COLOUR_ACCURACY}"


def test_shipped_builtin_tiny_is_what_builtin_tiny_resolves_to() -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    spec = builtin_spec("builtin:tiny")
    shipped = shipped_dir(spec)
    assert shipped is not None, "brandtune/assets/builtin_tiny/ (the pretrained weights) is missing"
    resolved = resolve_base("builtin:tiny")
    assert resolved.path == shipped
    assert (resolved.family, resolved.resolution, resolved.pipeline_class) == (
        "sd1",
        64,
        "StableDiffusionPipeline",
    )
    assert resolved.revision.startswith("sha256:")
    weights = list(shipped.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(shipped.rglob("*.bin"))
    assert sum(p.stat().st_size for p in weights) <= 25 * 2**20
    assert (shipped / "README.md").is_file() and (shipped / "pretrain.json").is_file()
    # The shipped architecture is the spec's: the from-config build and the pretrained copy are the same model.
    unet_config = json.loads((shipped / "unet" / "config.json").read_text())
    assert {k: unet_config[k] for k in spec.config["unet"]} == spec.config["unet"]
    pipe = StableDiffusionPipeline.from_pretrained(shipped)  # plain diffusers loads it
    pipe.set_progress_bar_config(disable=True)
    assert pipe(
        "a red mug on a beach",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0].size == (64, 64)
