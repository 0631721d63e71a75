"""Drawing: products as labelled silhouettes, shaded in numpy and composited over a setting's background.

A scene is drawn at ``supersample`` times the requested size and box-filtered down, which antialiases edges. The
product is drawn into a label map (0 background, 1 shadow, 2+ product materials); materials are coloured and shaded
in numpy, cylinders with a Lambert term and a specular highlight across their width. All random draws are made in
relative coordinates, in a fixed order, so a scene at 64 px and at 512 px has the same composition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from brandtune.errors import ConfigError
from brandtune.synthetic.backgrounds import BACKGROUNDS
from brandtune.synthetic.scenes import (
    ACME_LABEL,
    RGB,
    ProductStyle,
    Scene,
    caption_for,
    random_scene,
    resolve_colour,
)

_GROUND: dict[str, tuple[float, float]] = {  # where the product's base may rest, as a fraction of the height
    "studio": (0.74, 0.93),
    "beach": (0.74, 0.94),
    "snow": (0.72, 0.93),
    "kitchen": (0.76, 0.93),
    "forest": (0.74, 0.94),
    "city": (0.78, 0.94),
}
_PRODUCT_LIGHT = {"city": 0.78, "forest": 0.9}  # the product is dimmer in darker settings
_ASPECT = {"bottle": 0.42, "can": 0.62, "box": 0.9, "mug": 1.1, "tube": 0.48, "jar": 0.86}  # width / height


@dataclass
class _Material:
    rgb: RGB
    cx: float = 0.0  # cylinder axis x; half == 0 means flat
    half: float = 0.0
    shade: float = 1.0
    gloss: float = 1.0


class _Product:
    """Collects the product's shapes, in drawing order, on a label image."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.labels = Image.new("L", size, 0)
        self.draw = ImageDraw.Draw(self.labels)
        self.materials: list[_Material] = []

    def material(
        self, rgb: RGB, cx: float = 0.0, half: float = 0.0, shade: float = 1.0, gloss: float = 1.0
    ) -> int:
        self.materials.append(_Material(rgb, cx, half, shade, gloss))
        return len(self.materials) + 1

    def cylinder(self, label: int, cx: float, half: float, top: float, bottom: float, ell: float) -> None:
        """An upright cylinder side: a rectangle with an elliptic bottom edge."""
        self.draw.rectangle((cx - half, top, cx + half, bottom - ell), fill=label)
        self.draw.ellipse((cx - half, bottom - 2 * ell, cx + half, bottom), fill=label)

    def ellipse(self, label: int, cx: float, cy: float, rx: float, ry: float) -> None:
        self.draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=label)


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / points
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def _mark(p: _Product, mark: str, label: int, box: tuple[float, float, float, float]) -> None:
    """Draw ``mark`` centred in ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = min(x1 - x0, y1 - y0) * 0.36
    if mark == "stripe":
        p.draw.rectangle((x0, cy - (y1 - y0) * 0.1, x1, cy + (y1 - y0) * 0.1), fill=label)
    elif mark == "circle":
        p.ellipse(label, cx, cy, r, r)
    elif mark == "triangle":
        p.draw.polygon(
            [(cx, cy - r), (cx + r * 0.95, cy + r * 0.7), (cx - r * 0.95, cy + r * 0.7)], fill=label
        )
    elif mark == "star":
        p.draw.polygon(_star(cx, cy, r * 1.1), fill=label)


def _draw_bottle(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    body, accent = resolve_colour(s.body), resolve_colour(s.accent)
    acme = s.variant == "acme"
    cx = x + h * _ASPECT["bottle"] / 2
    bw, nw, cw = (0.2, 0.065, 0.085) if acme else (0.19, 0.075, 0.09)  # half widths
    body_top, neck_top = (base - 0.5 * h, base - 0.84 * h) if acme else (base - 0.55 * h, base - 0.86 * h)
    m_body = p.material(body, cx, bw * h)
    m_neck = p.material(body, cx, nw * h)
    m_cap = p.material(accent, cx, cw * h)
    p.cylinder(m_body, cx, bw * h, body_top, base, 0.04 * h)
    if acme:  # round shoulder and a long neck
        p.ellipse(m_body, cx, body_top, bw * h, 0.16 * h)
    else:
        p.draw.polygon(
            [(cx - bw * h, body_top), (cx + bw * h, body_top), (cx + nw * h, body_top - 0.15 * h),
             (cx - nw * h, body_top - 0.15 * h)],
            fill=m_body,
        )  # fmt: skip
    p.draw.rectangle((cx - nw * h, neck_top, cx + nw * h, body_top - 0.1 * h), fill=m_neck)
    p.draw.rectangle((cx - cw * h, base - h, cx + cw * h, neck_top + 0.01 * h), fill=m_cap)
    mark_box = (cx - bw * h, base - 0.42 * h, cx + bw * h, base - 0.12 * h)
    if acme:
        band = p.material(resolve_colour(ACME_LABEL), cx, bw * h)
        p.draw.rectangle(mark_box, fill=band)
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, bw * h), mark_box)
    elif s.mark != "none":
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, bw * h), mark_box)


def _draw_can(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    half = h * _ASPECT["can"] / 2
    cx, ell = x + half, 0.1 * half
    m_body = p.material(resolve_colour(s.body), cx, half)
    m_rim = p.material(resolve_colour(s.accent), cx, half)
    m_top = p.material(resolve_colour(s.accent), shade=1.15, gloss=0.0)
    p.cylinder(m_rim, cx, half, base - h + ell, base, ell * 1.2)
    p.cylinder(m_body, cx, half, base - h + ell + 0.07 * h, base - 0.05 * h, ell)
    p.ellipse(m_top, cx, base - h + ell, half * 0.97, ell)
    if s.mark != "none":
        box = (cx - half, base - 0.75 * h, cx + half, base - 0.25 * h)
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, half), box)


def _draw_box(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    w, d = 0.72 * h, 0.18 * h  # front width, depth (drawn as an oblique top and right side)
    body, accent = resolve_colour(s.body), resolve_colour(s.accent)
    top = base - h + d
    m_front, m_side = p.material(body, shade=0.95, gloss=0), p.material(body, shade=0.62, gloss=0)
    m_lid, m_lid_top = p.material(accent, shade=0.95, gloss=0), p.material(accent, shade=1.2, gloss=0)
    m_lid_side = p.material(accent, shade=0.62, gloss=0)
    p.draw.rectangle((x, top, x + w, base), fill=m_front)
    p.draw.polygon([(x + w, top), (x + w + d, top - d), (x + w + d, base - d), (x + w, base)], fill=m_side)
    lid = top + 0.16 * h
    p.draw.rectangle((x, top, x + w, lid), fill=m_lid)
    p.draw.polygon([(x + w, top), (x + w + d, top - d), (x + w + d, lid - d), (x + w, lid)], fill=m_lid_side)
    p.draw.polygon([(x, top), (x + w, top), (x + w + d, top - d), (x + d, top - d)], fill=m_lid_top)
    if s.mark != "none":
        m_mark = p.material(resolve_colour(s.mark_colour), shade=0.95, gloss=0)
        _mark(p, s.mark, m_mark, (x, lid, x + w, base))


def _draw_mug(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    half = 0.42 * h
    cx, ell = x + half, 0.12 * half
    body = resolve_colour(s.body)
    m_body = p.material(body, cx, half)
    m_handle = p.material(resolve_colour(s.accent), cx + half, 0.22 * h)
    m_inside = p.material(body, shade=0.4, gloss=0)
    t = 0.07 * h
    p.draw.ellipse((cx + half * 0.6, base - 0.8 * h, cx + half + 0.26 * h, base - 0.22 * h), outline=m_handle, width=max(1, round(t)))  # fmt: skip
    p.cylinder(m_body, cx, half, base - h + ell, base, ell)
    p.ellipse(m_body, cx, base - h + ell, half, ell)
    p.ellipse(m_inside, cx, base - h + ell, half * 0.9, ell * 0.75)
    if s.mark != "none":
        box = (cx - half * 0.8, base - 0.8 * h, cx + half * 0.8, base - 0.2 * h)
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, half), box)


def _draw_tube(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    half = h * _ASPECT["tube"] / 2
    cx = x + half
    body = resolve_colour(s.body)
    m_body = p.material(body, cx, half * 0.85)
    m_crimp = p.material(body, shade=0.75, gloss=0)
    m_cap = p.material(resolve_colour(s.accent), cx, 0.14 * h)
    cap_top, crimp = base - 0.14 * h, base - h + 0.06 * h
    p.draw.rectangle((cx - 0.14 * h, cap_top, cx + 0.14 * h, base), fill=m_cap)
    p.draw.polygon(
        [(cx - 0.1 * h, cap_top), (cx + 0.1 * h, cap_top), (cx + 0.17 * h, cap_top - 0.06 * h),
         (cx + half * 0.92, crimp), (cx - half * 0.92, crimp), (cx - 0.17 * h, cap_top - 0.06 * h)],
        fill=m_body,
    )  # fmt: skip
    p.draw.rectangle((cx - half, base - h, cx + half, crimp), fill=m_crimp)
    if s.mark != "none":
        box = (cx - half * 0.6, crimp + 0.1 * h, cx + half * 0.6, cap_top - 0.15 * h)
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, half * 0.85), box)


def _draw_jar(p: _Product, s: ProductStyle, x: float, base: float, h: float) -> None:
    half = h * _ASPECT["jar"] / 2
    cx, ell = x + half, 0.1 * half
    m_body = p.material(resolve_colour(s.body), cx, half * 0.95)
    m_lid = p.material(resolve_colour(s.accent), cx, half)
    m_lid_top = p.material(resolve_colour(s.accent), shade=1.15, gloss=0)
    p.cylinder(m_body, cx, half * 0.95, base - 0.78 * h, base, ell)
    p.cylinder(m_lid, cx, half, base - h + ell, base - 0.74 * h, ell)
    p.ellipse(m_lid_top, cx, base - h + ell, half, ell)
    if s.mark != "none":
        box = (cx - half * 0.7, base - 0.68 * h, cx + half * 0.7, base - 0.1 * h)
        _mark(p, s.mark, p.material(resolve_colour(s.mark_colour), cx, half * 0.95), box)


_DRAW = {
    "bottle": _draw_bottle,
    "can": _draw_can,
    "box": _draw_box,
    "mug": _draw_mug,
    "tube": _draw_tube,
    "jar": _draw_jar,
}


def _normalise_size(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else size
    if not (isinstance(width, int) and isinstance(height, int)) or min(width, height) < 16:
        raise ConfigError(f"size must be an int or a (width, height) pair of ints >= 16, got {size!r}")
    return width, height


def _shade_tables(
    mats: list[_Material], width: int, light: tuple[float, float], bright: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-material colour (n, 3) and per-material, per-column multiplier/specular tables (n, W)."""
    n = len(mats) + 2
    colour = np.zeros((n, 3), np.float32)
    shade = np.ones((n, width), np.float32)
    spec = np.zeros((n, width), np.float32)
    xs = np.arange(width, dtype=np.float32) + 0.5
    lx, lz = light
    for i, m in enumerate(mats, start=2):
        colour[i] = m.rgb
        if m.half <= 0:
            shade[i] = m.shade * bright
            continue
        u = np.clip((xs - m.cx) / m.half, -1.0, 1.0)
        diffuse = np.maximum(0.0, u * lx + np.sqrt(1.0 - u * u) * lz)
        shade[i] = (0.42 + 0.68 * diffuse) * m.shade * bright
        spec[i] = 150.0 * m.gloss * diffuse**30
    return colour, np.concatenate([shade[:, :, None], spec[:, :, None]], axis=2)


def render_scene(scene: Scene, size: int | tuple[int, int] = 64, supersample: int = 2) -> Image.Image:
    """Draw ``scene`` as an RGB image; the same scene, size and supersample give the same pixels.

    Args:
        scene: What to draw.
        size: Output side in pixels, or ``(width, height)``; each at least 16.
        supersample: Draw this many times larger and box-filter down (antialiasing); 1 is fastest.

    Raises:
        ConfigError: a bad size or supersample factor.
    """
    return _render(scene, size, supersample)[0]


def render_scene_with_mask(
    scene: Scene, size: int | tuple[int, int] = 64, supersample: int = 2
) -> tuple[Image.Image, np.ndarray]:
    """Like :func:`render_scene`, also returning the product's coverage, a float32 (H, W) array in [0, 1]."""
    image, labels = _render(scene, size, supersample)
    coverage = labels.point([0, 0] + [255] * 254)  # labels 2+ are the product; the shadow is not
    if supersample > 1:
        coverage = coverage.reduce(supersample)
    return image, np.asarray(coverage, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class _Layout:
    x: float  # left edge of the product's bounding box, px
    base: float  # y of the ground line the product rests on, px
    h: float  # product height, px
    light_x: float  # light direction's x component, -0.75 (from the left) .. 0.75
    bright: float  # overall exposure multiplier
    warm: float  # colour temperature shift, -1 (cool) .. 1 (warm)


def _layout(rng: np.random.Generator, scene: Scene, width: int, height: int) -> _Layout:
    """Place the product fully inside the frame, resting on the setting's ground; always six draws."""
    u_x, u_base, u_h, u_light, u_bright, u_warm = rng.random(6)
    aspect = _ASPECT[scene.product.kind]
    lo, hi = _GROUND[scene.setting]
    base = height * (lo + (hi - lo) * u_base)
    h = min(height * (0.4 + 0.22 * u_h), base - 0.05 * height, 0.86 * width / aspect)
    x = 0.05 * width + (0.9 * width - h * aspect) * u_x
    return _Layout(x, base, h, -0.75 + 1.5 * u_light, 0.86 + 0.28 * u_bright, -1.0 + 2.0 * u_warm)


def _render(scene: Scene, size: int | tuple[int, int], supersample: int) -> tuple[Image.Image, Image.Image]:
    """The image at the output size and the product's label map at the drawing size."""
    if supersample not in (1, 2, 3, 4):
        raise ConfigError(f"supersample must be 1, 2, 3 or 4, got {supersample!r}")
    out_w, out_h = _normalise_size(size)
    width, height = out_w * supersample, out_h * supersample
    rng = np.random.default_rng(scene.seed)
    lay = _layout(rng, scene, width, height)  # drawn first so the background cannot shift the layout
    image = BACKGROUNDS[scene.setting](rng, width, height)

    product = _Product((width, height))
    w, h, base = lay.h * _ASPECT[scene.product.kind], lay.h, lay.base
    shadow_cx = lay.x + w / 2 - lay.light_x * w * 0.35
    product.draw.ellipse(
        (shadow_cx - w * 0.62, base - 0.05 * h, shadow_cx + w * 0.62, base + 0.04 * h), fill=1
    )
    _DRAW[scene.product.kind](product, scene.product, lay.x, base, h)

    box = product.labels.getbbox()  # colour and shade the product inside its bounding box only
    if box is not None:
        x0, y0, x1, _ = box
        lab = np.asarray(product.labels.crop(box))  # (rows, cols) labels
        light = (lay.light_x, math.sqrt(1 - lay.light_x**2))
        colour, table = _shade_tables(product.materials, width, light, _PRODUCT_LIGHT.get(scene.setting, 1.0))
        st = table[lab, np.arange(x0, x1)[None, :]]  # (rows, cols, 2): multiplier, specular
        region = np.asarray(image.crop(box), dtype=np.float32)  # (rows, cols, 3)
        region = np.where((lab >= 2)[..., None], colour[lab] * st[..., :1] + st[..., 1:], region)
        region[lab == 1] *= 0.62
        image.paste(Image.fromarray(np.clip(region, 0, 255).astype(np.uint8), "RGB"), (x0, y0))
    if supersample > 1:
        image = image.reduce(supersample)
    gains = np.array([1 + 0.06 * lay.warm, 1 + 0.01 * lay.warm, 1 - 0.07 * lay.warm]) * lay.bright
    lut = np.clip((gains[:, None] * np.arange(256)).round(), 0, 255).astype(np.uint8)  # (3, 256)
    return image.point(lut.ravel().tolist()), product.labels


def iter_samples(
    n: int, seed: int, size: int | tuple[int, int] = 64, exclude: Callable[[Scene], bool] | None = None
) -> Iterator[tuple[Image.Image, str, Scene]]:
    """Yield ``n`` random (image, caption, scene) triples, the same ones for the same ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = random_scene(rng, exclude)
        yield render_scene(scene, size), caption_for(scene), scene
