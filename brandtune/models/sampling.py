"""Sample a base model (optionally with an adapter) into PIL images and grids, with fixed seeds.

The same prompt, seed, steps and guidance give the same image on the same machine: each image gets its own
``torch.Generator`` seeded with its seed, so a grid's images do not depend on how many were asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

#: Sampler settings the docs, the tests and ``brandtune base sample`` use for builtin:tiny.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0


def sample_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch_size: int = 16,
) -> list[Image.Image]:
    """Generate one image per (prompt, seed) pair, in order, in batches.

    Args:
        pipe: A diffusers text-to-image pipeline (LoRA loaded or not).
        prompts: One prompt per image.
        seeds: One seed per image (same length as ``prompts``).
        steps: Sampler steps.
        guidance: Classifier-free guidance scale.
        batch_size: Images per pipeline call.

    Returns:
        The images, in the order of ``prompts``.

    Raises:
        ValueError: ``prompts`` and ``seeds`` differ in length.
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk_p, chunk_s = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        gens = [torch.Generator().manual_seed(int(s)) for s in chunk_s]
        with torch.no_grad():
            out = pipe(chunk_p, generator=gens, num_inference_steps=steps, guidance_scale=guidance)
        images.extend(out.images)
    return images


def image_grid(images: Sequence[Image.Image], columns: int, thumb: int = 128) -> Image.Image:
    """Paste images into a grid, row by row, each scaled to ``thumb`` px (nearest neighbour, no blur)."""
    from PIL import Image

    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * thumb, rows * thumb), "white")
    for i, img in enumerate(images):
        tile = img.convert("RGB").resize((thumb, thumb), Image.Resampling.NEAREST)
        grid.paste(tile, ((i % columns) * thumb, (i // columns) * thumb))
    return grid
