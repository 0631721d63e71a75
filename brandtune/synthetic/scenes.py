"""Scene descriptions: the colour palette, product kinds, settings, captions and random sampling.

Nothing here draws; :mod:`brandtune.synthetic.render` turns a :class:`Scene` into pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from brandtune.errors import ConfigError

RGB = tuple[int, int, int]

#: Named colours used for product parts and in captions (name -> sRGB).
COLOURS: dict[str, RGB] = {
    "red": (200, 32, 38),
    "orange": (240, 120, 24),
    "yellow": (246, 204, 36),
    "green": (46, 150, 62),
    "teal": (0, 140, 136),
    "blue": (34, 80, 200),
    "purple": (120, 50, 160),
    "pink": (236, 120, 170),
    "black": (28, 28, 30),
    "white": (240, 240, 236),
}

#: Product kinds, each drawn as its own silhouette.
KINDS: tuple[str, ...] = ("bottle", "can", "box", "mug", "tube", "jar")

#: The part of each kind painted in the accent colour, as named in captions.
ACCENT_PARTS: dict[str, str] = {
    "bottle": "cap",
    "can": "lid",
    "box": "lid",
    "mug": "handle",
    "tube": "cap",
    "jar": "lid",
}

#: Marks printed on the product's front in the mark colour ("none" prints nothing).
MARKS: tuple[str, ...] = ("stripe", "circle", "triangle", "star", "none")

#: Setting key -> the phrase captions use for it.
SETTINGS: dict[str, str] = {
    "studio": "in a studio",
    "beach": "on a beach",
    "snow": "in the snow",
    "kitchen": "on a kitchen counter",
    "forest": "in a forest",
    "city": "on a city street at night",
}

#: Silhouette variants; "standard" is the only one :func:`random_scene` draws.
VARIANTS: tuple[str, ...] = ("standard", "acme")


def resolve_colour(spec: str) -> RGB:
    """Turn a colour name from :data:`COLOURS` or a ``#rrggbb`` string into an RGB triple.

    Raises:
        ConfigError: ``spec`` is neither a known name nor a 6-digit hex colour.
    """
    if spec in COLOURS:
        return COLOURS[spec]
    if len(spec) == 7 and spec.startswith("#"):
        try:
            return (int(spec[1:3], 16), int(spec[3:5], 16), int(spec[5:7], 16))
        except ValueError:
            pass
    raise ConfigError(f"colour {spec!r} is not one of {sorted(COLOURS)} nor a '#rrggbb' hex string")


def colour_name(spec: str) -> str:
    """The caption name of a colour: itself if named, else the nearest named colour (RGB distance)."""
    if spec in COLOURS:
        return spec
    rgb = np.array(resolve_colour(spec), dtype=np.float32)
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]


@dataclass(frozen=True)
class ProductStyle:
    """What the product looks like.

    Attributes:
        kind: One of :data:`KINDS`.
        body: Body colour: a :data:`COLOURS` name or ``#rrggbb``.
        accent: Colour of the accent part (:data:`ACCENT_PARTS`: cap, lid or handle).
        mark: One of :data:`MARKS`, printed on the front.
        mark_colour: Colour of the mark.
        variant: Silhouette variant, one of :data:`VARIANTS`.
        name: A proper name ("acme bottle"); when set, captions call the product by it.
    """

    kind: str
    body: str
    accent: str
    mark: str = "none"
    mark_colour: str = "white"
    variant: str = "standard"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"product kind {self.kind!r} is unknown; use one of {list(KINDS)}")
        if self.mark not in MARKS:
            raise ConfigError(f"mark {self.mark!r} is unknown; use one of {list(MARKS)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant {self.variant!r} is unknown; use one of {list(VARIANTS)}")
        if self.variant == "acme" and self.kind != "bottle":
            raise ConfigError(f"the 'acme' variant exists only for bottles, not {self.kind!r}")
        for colour in (self.body, self.accent, self.mark_colour):
            resolve_colour(colour)


@dataclass(frozen=True)
class Scene:
    """A product in a setting; ``seed`` fixes layout, lighting and background details.

    Attributes:
        product: The product drawn.
        setting: A key of :data:`SETTINGS`.
        seed: Any non-negative integer.
    """

    product: ProductStyle
    setting: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ConfigError(f"setting {self.setting!r} is unknown; use one of {list(SETTINGS)}")
        if self.seed < 0:
            raise ConfigError(f"scene seed must be >= 0, got {self.seed}")


#: The sample brand's product: a teal bottle with an orange cap, a cream label band and an orange star, on a
#: rounder bottle with a longer neck. :func:`random_scene` never draws it nor any teal bottle with an orange cap.
ACME_PRODUCT = ProductStyle(
    kind="bottle",
    body="#1fa6a0",
    accent="#f28c28",
    mark="star",
    mark_colour="#f28c28",
    variant="acme",
    name="acme bottle",
)
#: The acme label band's colour (a neutral cream).
ACME_LABEL = "#f4efe3"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(scene: Scene, detail: Literal["full", "short"] = "full") -> str:
    """A caption naming the product's kind, colours and the setting.

    Args:
        scene: The scene to describe.
        detail: "full" names body, accent part and mark; "short" names only the body colour and kind.

    Returns:
        e.g. "a photo of a red bottle with a white cap and a yellow star on a beach", or for a named product
        "a photo of acme bottle on a beach".
    """
    p = scene.product
    where = SETTINGS[scene.setting]
    if p.name is not None:
        return f"a photo of {p.name} {where}"
    body = colour_name(p.body)
    text = f"a photo of {_article(body)} {body} {p.kind}"
    if detail == "full":
        text += f" with {_article(colour_name(p.accent))} {colour_name(p.accent)} {ACCENT_PARTS[p.kind]}"
        if p.mark != "none":
            text += f" and {_article(colour_name(p.mark_colour))} {colour_name(p.mark_colour)} {p.mark}"
    return f"{text} {where}"


def resembles_acme(product: ProductStyle) -> bool:
    """True for the acme bottle and for any teal bottle with an orange cap (kept out of pretraining data)."""
    if product.variant == "acme" or product == ACME_PRODUCT:
        return True
    return (
        product.kind == "bottle"
        and colour_name(product.body) == "teal"
        and colour_name(product.accent) == "orange"
    )


def random_scene(
    rng: np.random.Generator,
    exclude: Callable[[Scene], bool] | None = None,
    *,
    kinds: tuple[str, ...] = KINDS,
    settings: tuple[str, ...] | None = None,
    colours: tuple[str, ...] | None = None,
) -> Scene:
    """Draw a random scene from the named kinds, colours, marks and settings.

    Accent and mark colours always differ from the body colour. Products that :func:`resembles_acme` are never
    drawn.

    Args:
        rng: The source of randomness; the same generator state gives the same scene.
        exclude: Optional predicate; scenes for which it returns True are redrawn.
        kinds: Kinds to draw from.
        settings: Setting keys to draw from (default: all of :data:`SETTINGS`).
        colours: Colour names to draw from (default: all of :data:`COLOURS`); at least two.

    Raises:
        ConfigError: an empty or unknown choice, or ``exclude`` rejects 1,000 draws in a row.
    """
    settings = tuple(SETTINGS) if settings is None else settings
    colours = tuple(COLOURS) if colours is None else colours
    if not kinds or not settings or len(colours) < 2:
        raise ConfigError("random_scene needs at least one kind, one setting and two colours")
    for _ in range(1000):
        kind = kinds[int(rng.integers(len(kinds)))]
        body_i = int(rng.integers(len(colours)))
        accent_i = (body_i + 1 + int(rng.integers(len(colours) - 1))) % len(colours)
        mark_i = (body_i + 1 + int(rng.integers(len(colours) - 1))) % len(colours)
        mark = MARKS[int(rng.integers(len(MARKS)))]
        setting = settings[int(rng.integers(len(settings)))]
        seed = int(rng.integers(2**31 - 1))
        product = ProductStyle(kind, colours[body_i], colours[accent_i], mark, colours[mark_i])
        scene = Scene(product, setting, seed)
        if resembles_acme(product) or (exclude is not None and exclude(scene)):
            continue
        return scene
    raise ConfigError(
        "random_scene: 1,000 draws in a row were excluded; loosen `exclude` or widen the choices"
    )
