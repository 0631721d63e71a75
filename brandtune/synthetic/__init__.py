"""Procedural "product photos": a deterministic scene generator built on PIL and numpy only.

A :class:`Scene` is a product (kind, colours, mark) in a setting (studio, beach, snow, kitchen, forest, city at
night) with a seed that fixes the layout and lighting. :func:`render_scene` draws it at any size, the same pixels
for the same scene and size; :func:`caption_for` names what is in it. The generator makes the sample brand's photos
(``scripts/make_sample_brand.py``) and pretraining data for the built-in tiny text-to-image model, so it is fast:
a 64x64 scene takes well under a millisecond on one core.

Example:
    >>> rng = numpy.random.default_rng(0)
    >>> scene = random_scene(rng)
    >>> image = render_scene(scene, 64)
    >>> caption_for(scene)  # e.g. 'a photo of a red bottle with a white cap and a yellow star on a beach'
"""

from brandtune.synthetic.render import iter_samples, render_scene, render_scene_with_mask
from brandtune.synthetic.scenes import (
    ACCENT_PARTS,
    ACME_LABEL,
    ACME_PRODUCT,
    COLOURS,
    KINDS,
    MARKS,
    SETTINGS,
    VARIANTS,
    ProductStyle,
    Scene,
    caption_for,
    colour_name,
    random_scene,
    resembles_acme,
    resolve_colour,
)

__all__ = [
    "ACCENT_PARTS",
    "ACME_LABEL",
    "ACME_PRODUCT",
    "COLOURS",
    "KINDS",
    "MARKS",
    "SETTINGS",
    "VARIANTS",
    "ProductStyle",
    "Scene",
    "caption_for",
    "colour_name",
    "iter_samples",
    "random_scene",
    "render_scene",
    "render_scene_with_mask",
    "resembles_acme",
    "resolve_colour",
]
