"""Write the sample brand's photos and the bad-input fixtures; both are committed, regenerated only by this script.

    .venv/bin/python scripts/make_sample_brand.py            # data/brands/acme/photos/ and tests/fixtures/bad/
    .venv/bin/python scripts/make_sample_brand.py --photos-dir /tmp/p --fixtures-dir /tmp/f

Photos: 24 pictures of the acme bottle (:data:`brandtune.synthetic.ACME_PRODUCT`), as a brand team keeps them:
12 packshots, RGBA cutouts on a transparent background in portrait (2:3 and 3:4), and 12 lifestyle shots, six in
the studio and six on a city street at night, each with its product mask beside it (``<name>.mask.png``, 255 on
the product), at 256-384 px on the short side and aspect ratios from 3:4 to 4:3, JPEG and PNG. The other four
settings the base model knows (beach, snow, kitchen counter, forest) are never in a photo: the demo's acceptance
test asks the adapter to carry the product into them. The renderer knows where the product is, so every mask is
exact: the cutouts' alpha and the mask files are its coverage (the cast shadow is background). Three JPEGs store
their pixels rotated with an EXIF Orientation tag, so only a reader that applies the tag sees them upright (their
masks are stored upright, as a mask tool writes them). Half the lifestyle shots get a kohya-style sidecar caption
(``<name>.txt``); ingest captions the rest from a template.

Fixtures (``tests/fixtures/bad/``): a ``good/`` folder of six valid photos, and one file per kind of bad input,
each named for what it is (see :func:`write_bad_fixtures`).
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from brandtune.synthetic import (
    ACME_PRODUCT,
    SETTINGS,
    Scene,
    caption_for,
    render_scene,
    render_scene_with_mask,
)

logger = logging.getLogger("make_sample_brand")

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTOS_DIR = REPO_ROOT / "data" / "brands" / "acme" / "photos"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "bad"
SEED = 20261126
CUTOUTS = 12  # RGBA packshots
CUTOUT_ASPECTS = ((2, 3), (3, 4))  # width : height; packshots of a bottle are portrait
LIFESTYLE = 6  # lifestyle shots per setting, each with a mask file
LIFESTYLE_SETTINGS = ("studio", "city")  # the settings the brand's photos show; the rest stay unseen
ASPECTS = ((3, 4), (4, 5), (1, 1), (5, 4), (4, 3))  # width : height of the lifestyle shots
SHORT_SIDES = (256, 288, 320, 352, 384)
ORIENTATION = 0x0112  # EXIF tag
# Orientation -> the transpose that turns the upright picture into the stored pixels (the inverse of what a
# viewer applies: 6 is shown rotated 90 degrees clockwise, so it is stored rotated 90 degrees counter-clockwise).
STORE_ROTATED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
BOMB_SIDE = 16000  # 256 M pixels declared: over Pillow's own limit (2 x 89.5 M) and any sane ingest limit


@dataclass(frozen=True)
class PhotoSpec:
    """One sample photo: what to draw and how to store it."""

    name: str
    scene: Scene
    size: tuple[int, int]
    fmt: str  # "JPEG", "PNG" (a lifestyle shot with a mask file) or "RGBA" (a cutout, stored as PNG)
    quality: int
    orientation: int  # EXIF orientation, 1 = none
    sidecar: bool


def photo_plan(seed: int = SEED) -> list[PhotoSpec]:
    """The 24 photos, the same list for the same seed: 12 cutouts, then 6 studio and 6 city lifestyle shots."""
    rng = np.random.default_rng(seed)
    specs: list[PhotoSpec] = []
    rotate_at = {14: 6, 17: 8, 21: 3}  # photo index -> EXIF orientation (JPEG lifestyle shots)
    for k in range(CUTOUTS + LIFESTYLE * len(LIFESTYLE_SETTINGS)):
        short = SHORT_SIDES[int(rng.integers(len(SHORT_SIDES)))]
        quality = int(rng.integers(82, 94))
        scene_seed = int(rng.integers(2**31 - 1))
        if k < CUTOUTS:
            aw, ah = CUTOUT_ASPECTS[k % len(CUTOUT_ASPECTS)]
            setting, fmt, name = "studio", "RGBA", f"acme_{k + 1:02d}_cutout.png"
        else:
            aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
            if k in rotate_at:  # never square, so a reader that ignores the tag also gets the shape wrong
                aw, ah = (4, 3) if k % 2 else (3, 4)
            setting = LIFESTYLE_SETTINGS[(k - CUTOUTS) // LIFESTYLE]
            fmt = "PNG" if k % 4 == 3 else "JPEG"
            name = f"acme_{k + 1:02d}_{setting}.{'png' if fmt == 'PNG' else 'jpg'}"
        size = (short, short * ah // aw) if aw <= ah else (short * aw // ah, short)
        scene = Scene(ACME_PRODUCT, setting, scene_seed)
        specs.append(
            PhotoSpec(name, scene, size, fmt, quality, rotate_at.get(k, 1), k >= CUTOUTS and k % 2 == 0)
        )
    return specs


def _save(image: Image.Image, path: Path, fmt: str, quality: int = 90, orientation: int = 1) -> None:
    """Save ``image`` (upright) to ``path``; with an orientation, store rotated pixels and the EXIF tag."""
    kwargs: dict[str, object] = {"optimize": True}
    if fmt == "JPEG":
        kwargs["quality"] = quality
    if orientation != 1:
        image = image.transpose(STORE_ROTATED[orientation])
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif
    image.save(path, fmt, **kwargs)


def _mask_image(coverage: np.ndarray) -> Image.Image:
    """The product's coverage (float, 0-1) as an 8-bit greyscale mask, 255 on the product."""
    return Image.fromarray((coverage * 255).round().astype(np.uint8), "L")


def _cutout(image: Image.Image, coverage: np.ndarray) -> Image.Image:
    """The product alone: its pixels where it covers the frame, transparent (and black) elsewhere."""
    alpha = _mask_image(coverage)
    rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
    rgba.paste(image, (0, 0), alpha.point(lambda v: 255 if v else 0))
    rgba.putalpha(alpha)
    return rgba


def write_photos(dest: Path, seed: int = SEED) -> list[Path]:
    """Write the sample photos, their masks and sidecar captions to ``dest``; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in photo_plan(seed):
        path = dest / spec.name
        upright, coverage = render_scene_with_mask(spec.scene, spec.size)
        if spec.fmt == "RGBA":
            _cutout(upright, coverage).save(path, "PNG", optimize=True)
            written.append(path)
            continue
        _save(upright, path, spec.fmt, spec.quality, spec.orientation)
        with Image.open(path) as stored:  # check a reader that applies EXIF sees the upright picture
            shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), dtype=np.float32)
        if (
            shown.shape != (upright.height, upright.width, 3)
            or np.abs(shown - np.asarray(upright)).mean() > 4
        ):
            raise RuntimeError(
                f"{path}: EXIF orientation {spec.orientation} does not restore the upright image"
            )
        mask = path.with_name(f"{path.stem}.mask.png")
        _mask_image(coverage).save(mask, "PNG", optimize=True)
        written += [path, mask]
        if spec.sidecar:
            caption = path.with_suffix(".txt")
            caption.write_text(caption_for(spec.scene) + "\n", encoding="utf-8")
            written.append(caption)
    return written


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _bomb_png(side: int) -> bytes:
    """A valid single-colour 1-bit greyscale PNG of side x side pixels, built row by row (no big buffer)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed black pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_png(noise: bytes) -> bytes:
    """A PNG that identifies (signature and a valid 320x320 RGB header) but whose pixel data is random bytes."""
    header = struct.pack(">IIBBBBB", 320, 320, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", noise)
        + _png_chunk(b"IEND", b"")
    )


def _zipslip(good: bytes) -> bytes:
    """A zip with one good image, two entries that escape the extraction folder and a symlink entry."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in ("acme_ok.jpg", "../evil.png", "/abs/evil.png"):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, good)
        link = zipfile.ZipInfo("link.png", date_time=(2026, 1, 1, 0, 0, 0))
        link.create_system = 3  # Unix, so the mode bits below are honoured by unzip
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../../../etc/passwd")
    return buf.getvalue()


def _acme(setting: str, seed: int, size: int | tuple[int, int] = 320) -> Image.Image:
    return render_scene(Scene(ACME_PRODUCT, setting, seed), size)


def write_bad_fixtures(dest: Path) -> list[Path]:
    """Write ``good/`` and the bad inputs to ``dest``; returns the files written.

    Files: ``not_an_image.jpg`` (text), ``corrupt.png`` (a valid PNG header, random pixel data), ``truncated.jpg`` (first
    half of a JPEG), ``tiny.png`` (24x24), ``panorama.png`` (1200x150), ``cmyk.jpg``, ``rgba.png`` (transparent
    background), ``palette.png`` (mode P), ``gray16.png`` (mode I;16), ``animated.gif`` (3 frames),
    ``duplicate_of_studio.png`` (byte copy of ``good/studio.png``), ``near_duplicate_of_forest.jpg``
    (``good/forest.png`` shifted 2 px and re-encoded as JPEG), ``bomb.png`` (16000x16000 declared, ~30 KB) and
    ``zipslip.zip``.
    """
    good_dir = dest / "good"
    good_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    good_sizes = {"studio": (288, 352), "beach": (320, 256), "snow": (256, 320), "kitchen": (300, 300)}
    for k, setting in enumerate(SETTINGS):
        fmt = "PNG" if setting in ("studio", "forest") else "JPEG"
        path = good_dir / f"{setting}.{'png' if fmt == 'PNG' else 'jpg'}"
        _save(_acme(setting, 900 + k, good_sizes.get(setting, (256, 256))), path, fmt, quality=85)
        written.append(path)

    def put(name: str, data: bytes) -> None:
        (dest / name).write_bytes(data)
        written.append(dest / name)

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        image.save(dest / name, **kwargs)
        written.append(dest / name)

    put("not_an_image.jpg", b"This is a text file with a .jpg name, not a photo of anything.\n" * 4)
    put("corrupt.png", _corrupt_png(np.random.default_rng(7).bytes(2048)))
    jpeg = io.BytesIO()
    _acme("beach", 910).save(jpeg, "JPEG", quality=85)
    put("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    save("tiny.png", _acme("studio", 911, 24))
    save("panorama.png", _acme("beach", 912, (1200, 150)), optimize=True)
    save("cmyk.jpg", _acme("kitchen", 913).convert("CMYK"), quality=85)
    image, mask = render_scene_with_mask(Scene(ACME_PRODUCT, "studio", 914), 320)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray((mask * 255).round().astype(np.uint8), "L"))
    save("rgba.png", rgba, optimize=True)
    save("palette.png", _acme("forest", 915).quantize(64), optimize=True)
    grey = np.asarray(_acme("snow", 916).convert("L"), dtype=np.uint16) * 257
    save("gray16.png", Image.fromarray(grey))
    frames = [_acme(s, 917 + i, 256).quantize(64) for i, s in enumerate(("beach", "snow", "city"))]
    frames[0].save(dest / "animated.gif", save_all=True, append_images=frames[1:], duration=300, loop=0)
    written.append(dest / "animated.gif")
    shutil.copyfile(good_dir / "studio.png", dest / "duplicate_of_studio.png")
    written.append(dest / "duplicate_of_studio.png")
    with Image.open(good_dir / "forest.png") as src:
        pixels = np.asarray(src.convert("RGB"))
    shifted = Image.fromarray(np.concatenate([pixels[:, 2:], pixels[:, -2:]], axis=1), "RGB")  # 2 px left
    save("near_duplicate_of_forest.jpg", shifted, quality=72)
    put("bomb.png", _bomb_png(BOMB_SIDE))
    put("zipslip.zip", _zipslip((good_dir / "beach.jpg").read_bytes()))
    return written


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write photos and fixtures, log the totals."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos-dir", type=Path, default=PHOTOS_DIR, help="where the acme photos go")
    parser.add_argument("--fixtures-dir", type=Path, default=FIXTURES_DIR, help="where the bad inputs go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for folder, files in (
        (args.photos_dir, write_photos(args.photos_dir)),
        (args.fixtures_dir, write_bad_fixtures(args.fixtures_dir)),
    ):
        total = sum(f.stat().st_size for f in files)
        logger.info("%d files, %.0f KB in %s", len(files), total / 1024, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
