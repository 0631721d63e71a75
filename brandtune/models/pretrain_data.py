"""Pretraining data for ``builtin:tiny``: random procedural scenes, their varied captions and product masks, as
tensors (stage 1 of :func:`brandtune.models.pretrain.pretrain`)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def vary_caption(scene: Any, u: tuple[float, float, float]) -> str:
    """One of several phrasings of a scene's caption, chosen by three uniform numbers.

    Half name only body colour and kind ("short"); a quarter drop "a photo of"; 15% drop the setting. So the
    model answers "a red mug", "a photo of a red mug on a beach" and the full description alike.
    """
    from brandtune.synthetic import SETTINGS, caption_for

    text = caption_for(scene, detail="short" if u[0] < 0.5 else "full")
    if u[1] < 0.25:
        text = text.removeprefix("a photo of ")
    if u[2] < 0.15:
        text = text.removesuffix(" " + SETTINGS[scene.setting])
    return text


def render_dataset(n: int, seed: int) -> tuple[Any, list[str], Any]:
    """Render ``n`` random 64 px scenes, their varied captions and the products' masks.

    Returns:
        ``(images, captions, masks)``: a ``(n, 3, 64, 64)`` uint8 tensor, ``n`` strings and a ``(n, 64, 64)``
        uint8 tensor of product coverage (0-255).
    """
    import numpy as np
    import torch

    from brandtune.synthetic import random_scene, render_scene_with_mask

    rng = np.random.default_rng(seed)
    images = torch.empty((n, 3, 64, 64), dtype=torch.uint8)
    masks = torch.empty((n, 64, 64), dtype=torch.uint8)
    captions = []
    for i in range(n):
        scene = random_scene(rng)
        image, coverage = render_scene_with_mask(scene, 64)
        images[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        masks[i] = torch.from_numpy((coverage * 255).round().astype(np.uint8))
        captions.append(vary_caption(scene, tuple(rng.random(3))))
    logger.info("rendered %d scenes", n)
    return images, captions, masks


def to_unit(images: Any) -> Any:
    return images.float() / 127.5 - 1.0  # (B, 3, 64, 64) in [-1, 1]
