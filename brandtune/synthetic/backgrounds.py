"""Backgrounds for each setting, drawn with a vertical colour gradient and a few PIL shapes.

Each function takes ``(rng, width, height)`` and makes the same number of random draws whatever the size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


def _vertical(height: int, width: int, stops: list[tuple[float, RGB]]) -> Image.Image:
    """An RGB image interpolating colour ``stops`` (fraction of height, RGB) down the rows."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    pos = np.array([s[0] for s in stops], np.float32)
    cols = np.array([s[1] for s in stops], np.float32)
    column = np.stack([np.interp(ys, pos, cols[:, c]) for c in range(3)], axis=1)
    strip = Image.fromarray(np.clip(column, 0, 255).astype(np.uint8)[:, None, :], "RGB")
    return strip.resize((width, height), Image.Resampling.NEAREST)


def _jitter(rng: np.random.Generator, rgb: RGB, amount: float = 12.0) -> RGB:
    d = rng.uniform(-amount, amount, 3)
    return tuple(int(np.clip(c + e, 0, 255)) for c, e in zip(rgb, d, strict=True))  # type: ignore[return-value]


def _bg_studio(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    wall = _jitter(rng, (226, 226, 228), 10)
    floor = tuple(min(255, c + 16) for c in wall)
    horizon = 0.55 + 0.1 * rng.random()
    dark = tuple(c - 28 for c in wall)
    stops = [(0.0, dark), (horizon, wall), (horizon + 0.08, tuple(c - 10 for c in wall)), (1.0, floor)]
    return _vertical(h, w, stops)


def _bg_beach(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = 0.42 + 0.08 * rng.random()
    shore = horizon + 0.1 + 0.05 * rng.random()
    sky_top, sky_low = _jitter(rng, (64, 128, 212), 14), _jitter(rng, (168, 208, 240), 8)
    sea, sand = _jitter(rng, (20, 110, 168), 12), _jitter(rng, (228, 204, 150), 10)
    stops = [(0.0, sky_top), (horizon, sky_low), (horizon + 1e-3, sea), (shore, tuple(c + 40 for c in sea)),
             (shore + 1e-3, (245, 245, 240)), (shore + 0.015, sand), (1.0, tuple(c - 22 for c in sand))]  # fmt: skip
    img = _vertical(h, w, stops)
    draw = ImageDraw.Draw(img)
    sx, sy, r = w * (0.1 + 0.8 * rng.random()), h * horizon * (0.2 + 0.4 * rng.random()), 0.05 * min(w, h)
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 246, 210))
    return img


def _tree(draw: ImageDraw.ImageDraw, cx: float, base: float, th: float, colour: RGB, trunk: RGB) -> None:
    draw.rectangle((cx - th * 0.04, base - th * 0.2, cx + th * 0.04, base), fill=trunk)
    for k in range(3):
        top = base - th * (1.0 - 0.22 * k)
        bottom = base - th * (0.15 + 0.2 * (2 - k)) * 0.9
        half = th * (0.18 + 0.07 * k)
        draw.polygon([(cx, top), (cx + half, bottom), (cx - half, bottom)], fill=colour)


def _bg_snow(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = 0.5 + 0.08 * rng.random()
    sky = _jitter(rng, (196, 208, 222), 8)
    stops = [(0.0, tuple(c - 18 for c in sky)), (horizon, sky), (horizon + 1e-3, (238, 242, 248)),
             (1.0, (250, 252, 255))]  # fmt: skip
    img = _vertical(h, w, stops)
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(3, 7))
    xs, sizes, depth = rng.random(n), rng.random(n), rng.random(n)
    for x, s, d in sorted(zip(xs, sizes, depth, strict=True), key=lambda t: t[2]):
        base = h * (horizon + 0.02 + 0.06 * d)
        _tree(
            draw, w * x, base, h * (0.16 + 0.14 * s), (24 + int(20 * d), 56 + int(20 * d), 44), (60, 44, 34)
        )
    return img


def _bg_kitchen(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    counter = 0.6 + 0.08 * rng.random()
    wall, wood = _jitter(rng, (236, 214, 178), 10), _jitter(rng, (158, 104, 60), 14)
    stops = [(0.0, tuple(c - 20 for c in wall)), (counter, wall), (counter + 1e-3, tuple(c + 30 for c in wood)),
             (counter + 0.02, wood), (1.0, tuple(c - 30 for c in wood))]  # fmt: skip
    img = _vertical(h, w, stops)
    draw = ImageDraw.Draw(img)
    tile = h * (0.08 + 0.04 * rng.random())
    grout = tuple(c - 24 for c in wall)
    line = max(1, round(h / 160))
    y = h * counter - tile
    while y > h * counter * 0.35:
        draw.line((0, y, w, y), fill=grout, width=line)
        y -= tile
    for k in range(int(w / tile) + 1):
        draw.line((k * tile, h * counter * 0.35, k * tile, h * counter), fill=grout, width=line)
    grain = tuple(c - 22 for c in wood)
    for g in rng.random(6):
        gy = h * (counter + 0.04 + (1 - counter - 0.04) * g)
        draw.line((0, gy, w, gy + h * 0.01), fill=grain, width=line)
    return img


def _bg_forest(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    ground = 0.6 + 0.08 * rng.random()
    sky, moss = _jitter(rng, (184, 212, 168), 12), _jitter(rng, (78, 108, 48), 12)
    stops = [(0.0, sky), (ground, tuple(c - 60 for c in sky)), (ground + 1e-3, moss),
             (1.0, tuple(c - 24 for c in moss))]  # fmt: skip
    img = _vertical(h, w, stops)
    draw = ImageDraw.Draw(img)
    for _ in range(7):  # foliage blobs
        fx, fy, fr, g = rng.random(4)
        r = h * (0.12 + 0.12 * fr)
        cy = h * ground * (0.1 + 0.5 * fy)
        draw.ellipse((w * fx - r, cy - r, w * fx + r, cy + r), fill=(30 + int(30 * g), 90 + int(40 * g), 40))
    for _ in range(6):  # trunks
        tx, tw, shade = rng.random(3)
        half = w * (0.012 + 0.025 * tw)
        tone = int(50 + 40 * shade)
        draw.rectangle(
            (w * tx - half, 0, w * tx + half, h * (ground + 0.03)), fill=(tone + 20, tone, tone - 20)
        )
    return img


def _bg_city(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    road = 0.64 + 0.06 * rng.random()
    stops = [(0.0, (8, 12, 36)), (road, (28, 34, 72)), (road + 1e-3, (70, 70, 76)), (road + 0.05, (58, 58, 62)),
             (road + 0.051, (42, 42, 46)), (1.0, (64, 64, 70))]  # fmt: skip
    img = _vertical(h, w, stops)
    draw = ImageDraw.Draw(img)
    x = -w * 0.05 * rng.random()
    while x < w:
        bw, bh, lit = rng.random(3)
        width, top = w * (0.12 + 0.14 * bw), h * road * (0.15 + 0.55 * bh)
        tone = 22 + int(14 * lit)
        draw.rectangle((x, top, x + width, h * road), fill=(tone, tone + 2, tone + 14))
        cols, rows = max(2, int(width / (w * 0.035))), max(2, int((h * road - top) / (h * 0.06)))
        pattern = rng.random(12) < 0.45
        for i in range(min(rows, 10)):
            for j in range(min(cols, 6)):
                if pattern[(i * 5 + j * 7) % 12]:
                    wx, wy = x + width * (j + 0.3) / cols, top + (h * road - top) * (i + 0.3) / rows
                    draw.rectangle((wx, wy, wx + w * 0.014, wy + h * 0.022), fill=(250, 214, 120))
        x += width + w * 0.01
    dash = max(1, round(h * 0.008))
    for k in range(6):
        dx = w * (k / 6 + 0.05 * rng.random())
        draw.rectangle((dx, h * 0.88, dx + w * 0.08, h * 0.88 + dash), fill=(220, 200, 90))
    return img


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], Image.Image]] = {
    "studio": _bg_studio,
    "beach": _bg_beach,
    "snow": _bg_snow,
    "kitchen": _bg_kitchen,
    "forest": _bg_forest,
    "city": _bg_city,
}
