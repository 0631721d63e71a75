"""Pretrain ``builtin:tiny`` from scratch on procedural product scenes, on a CPU, reproducibly.

Four stages, each seeded: (1) render ``num_images`` random scenes (:mod:`brandtune.synthetic`; the acme product is
never drawn) with varied captions and the products' masks; (2) train the VAE alone for ``vae_steps`` (L1
reconstruction of a sampled latent plus a light KL), then encode every image once and set the VAE's
``scaling_factor`` from the latents' spread; (3) train the UNet and the text encoder together on the cached latents
for ``unet_steps`` (v-prediction, the loss weighted towards the product, caption dropout for classifier-free
guidance, an EMA of the weights, which is what is saved); (4) fine-tune the VAE decoder alone on the same latents.
No VAE runs in the UNet loop, which is what makes stage 3 affordable. The data is made in
:mod:`brandtune.models.pretrain_data`, the stages run in :mod:`brandtune.models.pretrain_stages`. Curves go to MLflow (experiment
``brandtune/builtin-tiny``) like any run, and the result is a plain ``StableDiffusionPipeline`` folder.

Example:
    >>> result = pretrain(PretrainConfig(), Path("brandtune/assets/builtin_tiny"))
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brandtune.config import PretrainConfig
from brandtune.errors import TrainingError
from brandtune.models.pretrain_data import render_dataset
from brandtune.models.pretrain_stages import (
    encode_latents,
    finetune_decoder,
    loss_weights,
    train_unet,
    train_vae,
)

logger = logging.getLogger(__name__)

#: MLflow experiment suffix: runs land in ``brandtune/builtin-tiny``.
EXPERIMENT = "builtin-tiny"
PROVENANCE_FILE = "pretrain.json"


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced."""

    path: Path
    mlflow_run_id: str | None
    vae_psnr: float
    unet_loss: float
    wall_s: float
    cpu_s: float


def pretrain(config: PretrainConfig, dest: Path, settings: Any = None) -> PretrainResult:
    """Pretrain ``builtin:tiny`` and write it as a diffusers folder at ``dest`` (which must not exist).

    Args:
        config: The run's settings.
        dest: Output folder; written atomically (staged beside it, then moved into place).
        settings: brandtune :class:`~brandtune.settings.Settings`; read from the environment when omitted.

    Returns:
        Where the model is, its MLflow run and headline numbers.

    Raises:
        TrainingError: ``dest`` exists already, or the loss became NaN.
    """
    import torch

    from brandtune.fsutil import publish_dir, staging_dir
    from brandtune.models.builtin import _make_sd, builtin_spec
    from brandtune.settings import Settings

    if dest.exists():
        raise TrainingError(f"pretrain destination {dest} exists; remove it or choose another folder")
    settings = settings or Settings.from_env()
    torch.set_num_threads(config.num_threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    tracker = _start_tracker(config, settings) if config.tracking else None
    status = "FAILED"
    try:
        torch.manual_seed(config.seed)
        pipe = _make_sd(builtin_spec("builtin:tiny"))
        images, captions, masks = render_dataset(config.num_images, config.seed)
        psnr = train_vae(pipe.vae, images, config, tracker, masks)
        latents = encode_latents(pipe.vae, images)
        weights = loss_weights(masks, latents.shape[-1], config.product_loss_weight)
        loss = train_unet(pipe, latents, captions, config, tracker, weights)
        psnr = finetune_decoder(pipe.vae, images, latents, config, tracker, masks)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        with staging_dir(dest) as tmp:
            _save(pipe, tmp, config, {"vae_psnr_db": psnr, "unet_loss": loss, "wall_s": wall, "cpu_s": cpu})
            publish_dir(tmp, dest)
        if tracker is not None:
            tracker.log_metrics({"final/vae_psnr_db": psnr, "final/unet_loss": loss, "final/wall_s": wall}, 0)
            tracker.log_artifact(dest / PROVENANCE_FILE)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.finish(status)
    logger.info("pretrained builtin:tiny in %.0f s wall, %.0f s CPU: %s", wall, cpu, dest)
    return PretrainResult(dest, tracker.run_id if tracker else None, psnr, loss, wall, cpu)


def _start_tracker(config: PretrainConfig, settings: Any) -> Any:
    from brandtune.provenance import brandtune_version, git_sha
    from brandtune.tracking import RunTracker, flat_params

    tracker = RunTracker.start(
        EXPERIMENT,
        settings.tracking_uri,
        None,
        "pretrain-builtin-tiny",
        config.log_every,
        system_metrics=False,
    )
    tracker.log_params(flat_params(config.model_dump(mode="json")))
    tracker.log_dict(config.model_dump(mode="json"), "config/pretrain_config.json")
    tracker.set_tags(
        {
            "brandtune.stage": "pretrain",
            "brandtune.base_model": "builtin:tiny",
            "brandtune.git_sha": git_sha(),
            "brandtune.version": brandtune_version(),
        }
    )
    return tracker


def _save(pipe: Any, dest: Path, config: PretrainConfig, numbers: dict[str, float]) -> None:
    from brandtune.fsutil import atomic_write_json
    from brandtune.models.tokenizer import write_clip_tokenizer_files
    from brandtune.provenance import brandtune_version, git_sha

    pipe.save_pretrained(dest, safe_serialization=True)
    write_clip_tokenizer_files(dest / "tokenizer")
    atomic_write_json(
        dest / PROVENANCE_FILE,
        {
            "model": "builtin:tiny",
            "command": "brandtune base build-tiny",
            "config": config.model_dump(mode="json"),
            "results": {k: round(v, 4) for k, v in numbers.items()},
            "brandtune_version": brandtune_version(),
            "git_sha": git_sha(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    logger.info("wrote %s", json.dumps({k: round(v, 3) for k, v in numbers.items()}))
