"""The brand's training photos as the evaluation sees them: with their product masks, for the report and the
reference embeddings.

A dataset folder (``<home>/datasets/<brand>/<fingerprint>/``) holds ``<sha>.png`` images and, for those that have
one, a ``<sha>.mask.png`` beside it (8-bit greyscale, the image's size, 255 = product, 0 = background, soft edges
allowed). :func:`load_brand_photos` reads both; :func:`overlay` dims the background so a person sees at a glance
what the mask calls product; :func:`product_region` is the crop the model-based subject-fidelity metrics embed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from brandtune.errors import IngestError
from brandtune.ingest.layout import dataset_images

if TYPE_CHECKING:
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_SUFFIX",
    "NEUTRAL_GREY",
    "BrandPhoto",
    "load_brand_photos",
    "locate_dataset",
    "mask_box",
    "overlay",
    "product_region",
]

MASK_SUFFIX = ".mask.png"
NEUTRAL_GREY = (128, 128, 128)
PRODUCT_LEVEL = 128  # mask values at or above this are product when finding its bounding box


@dataclass(frozen=True)
class BrandPhoto:
    """One training photo: its file name, the RGB pixels and its product mask ("L", same size) if it has one."""

    name: str
    image: Image.Image
    mask: Image.Image | None = None

    @property
    def coverage(self) -> float | None:
        """Share of product pixels (mask mean / 255); None without a mask."""
        if self.mask is None:
            return None
        return float(np.asarray(self.mask, dtype=np.float64).mean() / 255.0)


def locate_dataset(brand: str, fingerprint: str | None, settings: Settings) -> tuple[Path | None, str]:
    """The dataset folder an adapter was trained on, and a one-line note on what was found.

    The adapter's dataset (``fingerprint``) first, else the brand's latest dataset (the note says so), else None.
    """
    from brandtune.ingest import find_dataset

    if fingerprint:
        try:
            folder = find_dataset(brand, fingerprint, settings)
        except IngestError:
            pass
        else:
            return folder, f"from dataset {folder.name}, the one the candidate was trained on"
    try:
        folder = find_dataset(brand, None, settings)
    except IngestError:
        wanted = f" {fingerprint[:12]}" if fingerprint else ""
        return None, f"No dataset{wanted} of {brand} here ({settings.datasets_dir}): brand photos not shown."
    trained = f"the candidate's dataset {fingerprint[:12]} is not here" if fingerprint else "no fingerprint"
    return folder, f"from dataset {folder.name}, the brand's latest ({trained})"


def _listed(folder: Path) -> list[tuple[Path, Path | None]]:
    """The dataset's images and masks as ``metadata.jsonl`` lists them, in file-name order (the folder's other
    files, such as the ingest contact sheet ``masks.png``, are not photos); none, with a warning, from a folder that
    is not a sound dataset."""
    try:
        images = dataset_images(folder)
    except IngestError as exc:
        logger.warning("no brand photos: %s", exc)
        return []
    return sorted(((image.file, image.mask) for image in images), key=lambda pair: pair[0].name)


def load_brand_photos(folder: Path, limit: int | None = None) -> list[BrandPhoto]:
    """The dataset's photos (``metadata.jsonl``) in file-name order (at most ``limit``), each with its mask if any.

    A mask file that is not the image's size is left out (with a warning): the dataset contract says they match.
    """
    photos = []
    for path, mask_path in _listed(Path(folder))[:limit]:
        with Image.open(path) as img:
            image = img.convert("RGB")
        mask = None
        if mask_path is not None:
            with Image.open(mask_path) as m:
                mask = m.convert("L")
            if mask.size != image.size:
                logger.warning("%s is %s, its image %s: mask not used", mask_path, mask.size, image.size)
                mask = None
        photos.append(BrandPhoto(path.name, image, mask))
    return photos


def overlay(photo: BrandPhoto, dim: float = 0.3) -> Image.Image:
    """The photo with its background dimmed to ``dim`` of its brightness (the product as it is); unchanged
    without a mask. Soft mask edges blend the two."""
    if photo.mask is None:
        return photo.image
    rgb = np.asarray(photo.image, dtype=np.float32)
    alpha = np.asarray(photo.mask, dtype=np.float32)[..., None] / 255.0
    out = rgb * (alpha + (1.0 - alpha) * dim)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def mask_box(mask: Image.Image, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """The product's bounding box ``(left, top, right, bottom)`` grown by ``margin`` of its longer side on every
    side and made square (centred on the product), so a resize for a model does not squash it. The box may
    reach past the image; None when the mask has no product pixel."""
    arr = np.asarray(mask) >= PRODUCT_LEVEL
    rows, cols = np.flatnonzero(arr.any(axis=1)), np.flatnonzero(arr.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(bottom - top, right - left)
    side += 2 * round(margin * side)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    return x0, y0, x0 + side, y0 + side


def product_region(
    photo: BrandPhoto, margin: float = 0.1
) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """What the subject-fidelity metrics embed of a brand photo, and the box it was cut from.

    With a mask: the square :func:`mask_box` (product box + ``margin``), with every background pixel, and
    whatever of the box lies past the photo, filled with :data:`NEUTRAL_GREY` (the soft mask blends product and
    grey), so the embedding sees the product and not the backdrop it was shot on. Without a mask, or with an
    empty one: the whole photo and None.
    """
    box = None if photo.mask is None else mask_box(photo.mask, margin)
    if box is None:
        if photo.mask is not None:
            logger.warning("brand photo %s: its mask is empty; the whole photo is embedded", photo.name)
        return photo.image, None
    grey = Image.new("RGB", photo.image.size, NEUTRAL_GREY)
    product = Image.composite(photo.image, grey, photo.mask)
    canvas = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), NEUTRAL_GREY)
    canvas.paste(product, (-box[0], -box[1]))
    return canvas, box
