"""The evaluation's model-based metrics: CLIP-T, CLIP-I and DINO with the user's local CLIP/DINOv2 folders.

:meth:`SubjectFidelity.load` loads the models named in :class:`~brandtune.config.EvalConfig` once, before anything
is sampled (a folder that does not load stops the job early); :meth:`SubjectFidelity.set_references` embeds the
brand photos once, each as its product region where it has a mask
(:func:`~brandtune.evaluation.brand_photos.product_region`); :meth:`SubjectFidelity.score` then scores every
compared model's images against those same references. Per image:

- ``clip_t``: CLIP agreement of the image with its own prompt (x100);
- ``clip_i``: mean CLIP cosine similarity of the image to the brand photos' product regions;
- ``dino``: mean DINOv2 cosine similarity of the image to the brand photos' product regions.

Without brand photos (no dataset here) only ``clip_t`` is computed. The scorers run in float32 on the
evaluation's device (``EvalConfig.device``: the GPU when there is one), like its sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from brandtune.evaluation.brand_photos import BrandPhoto, mask_box

if TYPE_CHECKING:
    from brandtune.config import EvalConfig
    from brandtune.evaluation.imageprep import ImageLike
    from brandtune.evaluation.model_metrics import ClipScorer, DinoScorer
    from brandtune.evaluation.report import SubjectFidelityInfo

logger = logging.getLogger(__name__)

__all__ = ["SubjectFidelity"]


class SubjectFidelity:
    """The loaded CLIP and/or DINO scorers and the brand photos' reference embeddings."""

    def __init__(self, config: EvalConfig, clip: ClipScorer | None, dino: DinoScorer | None) -> None:
        self.config, self.clip, self.dino = config, clip, dino
        self.clip_refs: np.ndarray | None = None
        self.dino_refs: np.ndarray | None = None
        self.references = self.product_regions = 0

    @classmethod
    def load(cls, config: EvalConfig, device: str = "cpu") -> SubjectFidelity | None:
        """The scorers of ``config.clip_model`` / ``config.dino_model`` on ``device`` (the evaluation's, resolved);
        None when neither is set.

        Raises:
            ConfigError: a folder is not a loadable CLIP (CLIPModel + CLIPProcessor) or vision model.
        """
        if config.clip_model is None and config.dino_model is None:
            return None
        from brandtune.evaluation.model_metrics import ClipScorer, DinoScorer

        clip = ClipScorer.from_pretrained(config.clip_model, device=device) if config.clip_model else None
        dino = DinoScorer.from_pretrained(config.dino_model, device=device) if config.dino_model else None
        return cls(config, clip, dino)

    def set_references(self, photos: Sequence[BrandPhoto]) -> None:
        """Embed the brand photos once (product regions where masked); none: clip_i and dino are left out."""
        self.references = len(photos)
        self.product_regions = sum(p.mask is not None and mask_box(p.mask) is not None for p in photos)
        if not photos:
            logger.warning("no brand photos here: clip_i and dino are not computed")
            return
        if self.clip is not None:
            self.clip_refs = self.clip.reference_embeddings(photos)
        if self.dino is not None:
            self.dino_refs = self.dino.reference_embeddings(photos)

    def score(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[dict[str, float]]:
        """Per image (in order) its ``clip_t``, ``clip_i`` and ``dino``, as far as the models and references
        allow; ``prompts[i]`` is the prompt image ``i`` was sampled from."""
        columns: dict[str, np.ndarray] = {}
        if not images:
            return []
        if self.clip is not None:
            columns["clip_t"] = self.clip.clip_t(images, prompts)
            if self.clip_refs is not None:
                columns["clip_i"] = self.clip.clip_i(images, self.clip_refs)
        if self.dino is not None and self.dino_refs is not None:
            columns["dino"] = self.dino.similarity(images, self.dino_refs)
        return [{name: float(values[i]) for name, values in columns.items()} for i in range(len(images))]

    def info(self) -> SubjectFidelityInfo:
        """What the report says about these metrics."""
        from brandtune.evaluation.report import SubjectFidelityInfo

        return SubjectFidelityInfo(
            clip_model=str(self.config.clip_model) if self.config.clip_model else None,
            dino_model=str(self.config.dino_model) if self.config.dino_model else None,
            references=self.references,
            product_regions=self.product_regions,
        )
