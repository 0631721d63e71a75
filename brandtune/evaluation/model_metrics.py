"""Model-based metrics from local weights only: CLIP-T, CLIP-I, DINO similarity, FID and KID.

Nothing is downloaded: every loader takes a local folder and passes ``local_files_only=True`` and
``use_safetensors=True`` (pickled ``pytorch_model.bin`` weights are refused). torch and transformers are imported
inside functions, so importing this module is cheap.

What to provide (each a folder written by ``save_pretrained``, e.g. copied from a machine with hub access):

- **CLIP** (CLIP-T, CLIP-I): a ``CLIPModel`` folder with ``config.json``, ``model.safetensors``, the tokenizer
  (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``) and ``preprocessor_config.json``; e.g.
  ``openai/clip-vit-base-patch32`` or ``-large-patch14``.
- **DINO**: a DINOv2 ``AutoModel`` folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json``),
  e.g. ``facebook/dinov2-small``. The embedding is the CLS token of the last hidden state.
- **FID/KID feature space**: any local vision backbone folder that ``AutoModel`` loads (CLIP, DINOv2, ViT, ...).
  The classic Inception-v3 FID needs torch-fidelity, which needs torchvision (not installable here), so the
  feature space is the backbone's pooled embedding instead (FD-DINOv2 is the recommended choice in Stein et al.,
  2023). Values are comparable only between runs that use the same backbone folder, never with published FID.

Subject fidelity is measured on the product: brand photos given as
:class:`~brandtune.evaluation.brand_photos.BrandPhoto` with a mask are embedded as their product region
(:func:`~brandtune.evaluation.brand_photos.product_region`: the mask's bounding box plus a 10% margin, made square,
the background filled with neutral grey), photos without a mask whole (:meth:`ClipScorer.reference_embeddings`,
:meth:`DinoScorer.reference_embeddings`).

Example:
    >>> clip = ClipScorer.from_pretrained(Path("/models/clip-vit-base-patch32"))
    >>> clip.clip_t(images, prompts)  # (N,) in [0, 100]
    >>> refs = clip.reference_embeddings(load_brand_photos(dataset_dir))  # product regions where masked
    >>> clip.clip_i(images, refs)
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brandtune.config import check_model_folder
from brandtune.errors import ConfigError
from brandtune.evaluation.brand_photos import BrandPhoto, product_region
from brandtune.evaluation.imageprep import ImageLike, MetricInputError, Prepared, prepare

logger = logging.getLogger(__name__)

__all__ = [
    "ClipScorer",
    "DinoScorer",
    "check_model_folder",
    "fid_kid",
    "load_feature_backbone",
    "reference_crops",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _u8_batch(images: Sequence[ImageLike | Prepared]) -> Any:
    """``(N, 3, H, W)`` uint8 tensor; all images must have the same size."""
    import torch

    if len(images) == 0:
        raise MetricInputError("no images given")
    arrays = [prepare(img).u8 for img in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise MetricInputError(f"images must share one size for batching, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


References = Sequence[BrandPhoto | ImageLike | Prepared]


def reference_crops(references: References, margin: float = 0.1) -> list[ImageLike | Prepared]:
    """What is embedded of each reference: a masked brand photo's product region, anything else as it is."""
    return [product_region(r, margin)[0] if isinstance(r, BrandPhoto) else r for r in references]


def _pooled(output: Any) -> Any:
    """The embedding from a transformers output: pooler_output, else the CLS token; tensors pass through."""
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        return output.pooler_output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state[:, 0]
    return output


def _normalised(x: Any) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


class ClipScorer:
    """CLIP-T and CLIP-I with a local ``CLIPModel`` and ``CLIPProcessor``."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu", batch_size: int = 16) -> None:
        self.model, self.processor, self.device, self.batch_size = model, processor, device, batch_size

    @classmethod
    def from_pretrained(cls, folder: Path | str, device: str = "cpu", batch_size: int = 16) -> ClipScorer:
        """Load CLIP from a local folder (see the module docstring for its contents)."""
        from transformers import CLIPModel, CLIPProcessor

        path = check_model_folder(folder, "CLIP model")
        try:
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
            model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"CLIP model folder {path} could not be loaded as CLIPModel + CLIPProcessor: {exc}"
            ) from exc
        return cls(model.eval().to(device), processor, device, batch_size)

    def image_embeddings(self, images: Sequence[ImageLike | Prepared]) -> np.ndarray:
        """L2-normalised image embeddings, ``(N, D)``."""
        import torch

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [prepare(img).pil for img in images[start : start + self.batch_size]]
            inputs = self.processor(images=chunk, return_tensors="pt")
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            out.append(_normalised(_pooled(feats)))
        return np.concatenate(out)

    def reference_embeddings(self, references: References, margin: float = 0.1) -> np.ndarray:
        """L2-normalised embeddings of the brand photos, ``(N, D)``: product regions where a mask exists
        (:func:`reference_crops`). Pass the result to :meth:`clip_i` once for every image."""
        return self.image_embeddings(reference_crops(references, margin))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, ``(N, D)`` (texts truncated to the tokenizer's maximum length)."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.processor(
                text=list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                feats = self.model.get_text_features(**inputs)
            out.append(_normalised(_pooled(feats)))
        return np.concatenate(out)

    def clip_t(self, images: Sequence[ImageLike | Prepared], prompts: Sequence[str]) -> np.ndarray:
        """CLIP-T: ``100 * max(cos(image, prompt), 0)`` per image/prompt pair, ``(N,)`` in [0, 100], higher is better.

        Raises:
            MetricInputError: ``images`` and ``prompts`` differ in length.
        """
        if len(images) != len(prompts):
            raise MetricInputError(
                f"clip_t needs one prompt per image, got {len(images)} images, {len(prompts)} prompts"
            )
        sims = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(axis=1)
        return 100.0 * np.maximum(sims, 0.0)

    def clip_i(
        self, images: Sequence[ImageLike | Prepared], references: Sequence[ImageLike | Prepared] | np.ndarray
    ) -> np.ndarray:
        """CLIP-I: mean cosine similarity of each image to the reference photos (DreamBooth's definition).

        Args:
            images: Generated images.
            references: Brand photos, or their :meth:`image_embeddings` computed once.

        Returns:
            ``(N,)`` in [-1, 1]; higher is closer to the brand's photos.
        """
        refs = references if isinstance(references, np.ndarray) else self.image_embeddings(references)
        return (self.image_embeddings(images) @ refs.T).mean(axis=1)


class DinoScorer:
    """DINO similarity with a local DINOv2 (or any ``AutoModel`` vision backbone) folder."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    @classmethod
    def from_pretrained(cls, folder: Path | str, device: str = "cpu", batch_size: int = 16) -> DinoScorer:
        """Load the backbone (see :func:`load_feature_backbone`); embeddings are CLS tokens."""
        return cls(load_feature_backbone(folder, device=device, batch_size=batch_size, what="DINO model"))

    def embeddings(self, images: Sequence[ImageLike | Prepared]) -> np.ndarray:
        """L2-normalised embeddings, ``(N, D)``. Images of different sizes (aspects, product crops) are first
        resized to the backbone's input size, which it resizes every image to anyway."""
        prepared: Sequence[ImageLike | Prepared] = [prepare(img) for img in images]
        if len({p.pil.size for p in prepared}) > 1:
            height, width = self.backbone.size
            prepared = [p.pil.resize((width, height), Image.BICUBIC) for p in prepared]
        return _normalised(self.backbone.embed(_u8_batch(prepared)))

    def reference_embeddings(self, references: References, margin: float = 0.1) -> np.ndarray:
        """L2-normalised embeddings of the brand photos, ``(N, D)``: product regions where a mask exists
        (:func:`reference_crops`). Pass the result to :meth:`similarity`."""
        return self.embeddings(reference_crops(references, margin))

    def similarity(
        self, images: Sequence[ImageLike | Prepared], references: Sequence[ImageLike | Prepared] | np.ndarray
    ) -> np.ndarray:
        """Mean cosine similarity of each image to the references, ``(N,)`` in [-1, 1]; higher is closer."""
        refs = references if isinstance(references, np.ndarray) else self.embeddings(references)
        return (self.embeddings(images) @ refs.T).mean(axis=1)


@functools.cache
def _backbone_class() -> type:
    """The feature-extractor nn.Module, defined on first use so that importing this module needs no torch."""
    import torch
    from torch import nn

    class FeatureBackbone(nn.Module):
        """Vision backbone as a torchmetrics feature extractor: ``(N, 3, H, W)`` uint8 -> ``(N, D)`` float."""

        def __init__(
            self,
            model: nn.Module,
            size: tuple[int, int],
            mean: Sequence[float],
            std: Sequence[float],
            batch_size: int,
        ) -> None:
            super().__init__()
            self.model, self.size, self.batch_size = model, size, batch_size
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
            with torch.inference_mode():
                self.num_features = int(self.embed(torch.zeros(1, 3, *size, dtype=torch.uint8)).shape[-1])

        def embed(self, imgs: torch.Tensor) -> torch.Tensor:
            device = self.mean.device
            out = []
            for start in range(0, imgs.shape[0], self.batch_size):
                x = imgs[start : start + self.batch_size].to(device)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
                x = nn.functional.interpolate(
                    x, size=self.size, mode="bilinear", antialias=True, align_corners=False
                )
                x = (x - self.mean) / self.std
                with torch.inference_mode():
                    if hasattr(
                        self.model, "get_image_features"
                    ):  # a full CLIPModel: the projected image embedding
                        feats = _pooled(self.model.get_image_features(pixel_values=x))
                    else:
                        feats = _pooled(self.model(pixel_values=x))
                out.append(feats.float())
            return torch.cat(out)

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return self.embed(imgs)

    return FeatureBackbone


def _preprocessing(path: Path, config: Any) -> tuple[tuple[int, int], Sequence[float], Sequence[float]]:
    """Input size, mean and std from ``preprocessor_config.json``, else from the model config and ImageNet."""
    import json

    pre = path / "preprocessor_config.json"
    data = json.loads(pre.read_text()) if pre.is_file() else {}
    size = data.get("crop_size") or data.get("size") or {}
    if isinstance(size, int):
        size = {"height": size, "width": size}
    side = size.get("height") or size.get("shortest_edge")
    if side is None:
        vision = getattr(config, "vision_config", config)
        side = getattr(vision, "image_size", 224)
    width = size.get("width") or side
    return (int(side), int(width)), data.get("image_mean", IMAGENET_MEAN), data.get("image_std", IMAGENET_STD)


def load_feature_backbone(
    folder: Path | str, device: str = "cpu", batch_size: int = 16, what: str = "FID feature backbone"
) -> Any:
    """Load a local vision backbone as an ``nn.Module`` feature extractor (uint8 images in, embeddings out).

    Input size and normalisation come from the folder's ``preprocessor_config.json`` (``crop_size``/``size``,
    ``image_mean``, ``image_std``), else the model config's ``image_size`` and ImageNet statistics. The embedding
    is the projected image embedding for a full CLIP model, else ``pooler_output``, else the CLS token.

    Raises:
        ConfigError: the folder is not a loadable vision model with safetensors weights.
    """
    from transformers import AutoModel

    path = check_model_folder(folder, what)
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{what} folder {path} could not be loaded with AutoModel: {exc}") from exc
    size, mean, std = _preprocessing(path, model.config)
    try:
        module = _backbone_class()(model.eval(), size, mean, std, batch_size)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{what} folder {path} ({type(model).__name__}) does not take images as pixel_values: {exc}; "
            "give a vision model (CLIP, DINOv2, ViT, ...)"
        ) from exc
    return module.to(device)


def fid_kid(
    real: Sequence[ImageLike | Prepared],
    fake: Sequence[ImageLike | Prepared],
    backbone: Any,
    kid_subset_size: int | None = None,
    kid_subsets: int = 50,
) -> dict[str, float]:
    """FID and KID between brand photos and generated images in ``backbone``'s feature space (torchmetrics).

    Args:
        real: Reference photos (one size).
        fake: Generated images (one size; may differ from the references').
        backbone: From :func:`load_feature_backbone`.
        kid_subset_size: KID subset size; default ``min(len(real), len(fake), 1000)``.
        kid_subsets: Number of KID subsets.

    Returns:
        ``{"fid", "kid", "kid_std"}``; lower is closer. FID needs at least 2 images per side and is noisy below
        a few hundred; treat small-sample values as a trend between runs with the same suite.
    """
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if min(len(real), len(fake)) < 2:
        raise MetricInputError(
            f"FID/KID need at least 2 real and 2 fake images, got {len(real)} and {len(fake)}"
        )
    subset = kid_subset_size or min(len(real), len(fake), 1000)
    size = tuple(backbone.size)
    device = backbone.mean.device  # the metrics' running sums live where the backbone's features come out
    fid = FrechetInceptionDistance(feature=backbone, input_img_size=(3, *size), reset_real_features=False)
    with warnings.catch_warnings():  # "will save all extracted features": a few hundred embeddings at most
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=backbone, subsets=kid_subsets, subset_size=subset, reset_real_features=False
        )
    fid, kid = fid.to(device), kid.to(device)
    real_u8, fake_u8 = _u8_batch(real), _u8_batch(fake)
    for metric in (fid, kid):
        metric.update(real_u8, real=True)
        metric.update(fake_u8, real=False)
    with torch.inference_mode():
        fid_value = float(fid.compute())
        kid_mean, kid_std = kid.compute()
    return {"fid": fid_value, "kid": float(kid_mean), "kid_std": float(kid_std)}
