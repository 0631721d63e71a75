"""Pretrain ``builtin:tiny`` from scratch on procedural product scenes, on a CPU, reproducibly.

Four stages, each seeded: (1) render ``num_images`` random scenes (:mod:`brandtune.synthetic`; the acme product is
never drawn) with varied captions and the products' masks; (2) train the VAE alone for ``vae_steps`` (L1
reconstruction of a sampled latent plus a light KL), then encode every image once and set the VAE's
``scaling_factor`` from the latents' spread; (3) train the UNet and the text encoder together on the cached latents
for ``unet_steps`` (v-prediction, the loss weighted towards the product, caption dropout for classifier-free
guidance, an EMA of the weights, which is what is saved); (4) fine-tune the VAE decoder alone on the same latents.
No VAE runs in the UNet loop, which is what makes stage 3 affordable. Curves go to MLflow (experiment
``brandtune/builtin-tiny``) like any run, and the result is a plain ``StableDiffusionPipeline`` folder.

Example:
    >>> result = pretrain(PretrainConfig(), Path("brandtune/assets/builtin_tiny"))
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from brandtune.config import StrictModel
from brandtune.errors import TrainingError

logger = logging.getLogger(__name__)

#: MLflow experiment suffix: runs land in ``brandtune/builtin-tiny``.
EXPERIMENT = "builtin-tiny"
PROVENANCE_FILE = "pretrain.json"


class PretrainConfig(StrictModel):
    """How ``builtin:tiny`` is pretrained. Defaults are what the shipped weights were made with."""

    seed: int = Field(
        default=0, ge=0, description="Seed of the scenes, captions, initial weights, noise and order."
    )
    num_images: int = Field(
        default=12000, ge=128, description="Procedural 64 px scenes rendered for training."
    )
    vae_steps: int = Field(default=1200, ge=1, description="Most VAE optimizer steps (stage 2).")
    vae_target_psnr: float = Field(
        default=30.0,
        gt=0,
        description="Stop the VAE early once held-out PSNR (dB, checked every 25 steps) reaches it.",
    )
    vae_batch_size: int = Field(default=32, ge=1, description="Image crops per VAE step.")
    vae_crop: int = Field(
        default=32,
        ge=8,
        le=64,
        description="VAE trains on random square crops of this size (fully convolutional).",
    )
    vae_learning_rate: float = Field(default=3e-3, gt=0, description="VAE peak learning rate (cosine decay).")
    kl_weight: float = Field(default=1e-4, ge=0, description="Weight of the KL term (per latent element).")
    vae_product_weight: float = Field(
        default=8.0,
        ge=0,
        description="Extra reconstruction weight inside the product's mask (pixels), in the VAE and decoder stages: "
        "a thin product is a few percent of the pixels, and an unweighted L1 lets the decoder smear its colours "
        "into the background's. 0: plain L1.",
    )
    decoder_steps: int = Field(
        default=600,
        ge=0,
        description="Decoder-only fine-tune on the frozen encoder's latents (stage 4; the encoder, the latents and "
        "so the UNet are unchanged). It sharpens the hues the VAE stage leaves washed out.",
    )
    decoder_learning_rate: float = Field(
        default=1e-3, gt=0, description="Decoder fine-tune peak learning rate."
    )
    unet_steps: int = Field(default=1600, ge=1, description="UNet + text encoder optimizer steps (stage 3).")
    unet_batch_size: int = Field(
        default=64,
        ge=1,
        description="Latents per UNet step (on a CPU, per-image cost falls ~3x from batch 32 to 128).",
    )
    unet_learning_rate: float = Field(default=2e-3, gt=0, description="UNet/text peak learning rate.")
    warmup_steps: int = Field(default=20, ge=0, description="Linear warm-up steps of both stages.")
    snr_gamma: float | None = Field(
        default=None,
        gt=0,
        description="Min-SNR loss weighting gamma; None: plain loss. For v-prediction Min-SNR scales the loss of "
        "high-noise steps by ~SNR (near 0), which is where the caption decides the image.",
    )
    product_loss_weight: float = Field(
        default=4.0,
        ge=0,
        description="Extra loss weight inside the product's mask (latent grid): the product is a small part of "
        "the image, and its colour is what the caption's colour word must control. 0: plain loss.",
    )
    caption_dropout: float = Field(default=0.1, ge=0, lt=1, description="Share of empty captions (for CFG).")
    ema_decay: float = Field(
        default=0.99, ge=0, lt=1, description="EMA decay of the saved UNet/text weights."
    )
    num_threads: int = Field(
        default=1,
        ge=1,
        description="torch CPU threads. 1 is ~5x faster than 2 on a shared, oversubscribed 2-core machine (threads "
        "spin waiting for each other); 2 is ~1.6x faster on an idle one.",
    )
    log_every: int = Field(default=10, ge=1, description="Log metrics to MLflow and the log every N steps.")
    tracking: bool = Field(default=True, description="Log the run to MLflow (Settings' tracking URI).")


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
    from brandtune.training.tracking import RunTracker, flat_params

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


# --- data ------------------------------------------------------------------------------------------------------


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


def _to_unit(images: Any) -> Any:
    return images.float() / 127.5 - 1.0  # (B, 3, 64, 64) in [-1, 1]


def _lr_lambda(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _log(tracker: Any, stage: str, step: int, total: int, metrics: dict[str, float], every: int) -> None:
    if tracker is not None:
        tracker.log_metrics(metrics, step)
    if step % every == 0 or step == total:
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logger.info("%s step %d/%d %s", stage, step, total, shown)


# --- stage 2: VAE ----------------------------------------------------------------------------------------------


def train_vae(vae: Any, images: Any, config: PretrainConfig, tracker: Any, masks: Any = None) -> float:
    """Train the VAE on ``images``; return the PSNR (dB) of the posterior means on a held-out batch.

    ``masks`` (product coverage, as from :func:`render_dataset`) weight the L1 by ``config.vae_product_weight``.
    """
    import torch

    gen = torch.Generator().manual_seed(config.seed + 1)
    held_out = _to_unit(images[-32:])
    pool = images.shape[0] - 32
    with (
        torch.no_grad()
    ):  # start with a near-deterministic posterior (logvar -10): the decoder sees clean latents
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:].fill_(-10.0)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps, config.vae_steps))
    t0 = time.perf_counter()
    for step in range(1, config.vae_steps + 1):
        x, w = _random_crops(images, pool, config.vae_batch_size, config.vae_crop, gen, masks)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        rec = _weighted_l1(recon, x, w, config.vae_product_weight)
        kl = dist.kl().mean() / dist.mean[0].numel()
        loss = rec + config.kl_weight * kl
        if not torch.isfinite(loss):
            raise TrainingError(f"VAE loss is {loss.item()} at step {step}; lower vae_learning_rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        metrics = {
            "vae/l1": rec.item(),
            "vae/kl": kl.item(),
            "vae/s_per_step": (time.perf_counter() - t0) / step,
        }
        done = step == config.vae_steps
        if step % 25 == 0 or done:
            metrics["vae/psnr_db"] = vae_psnr(vae, held_out)
            done = done or metrics["vae/psnr_db"] >= config.vae_target_psnr
        _log(tracker, "vae", step, config.vae_steps, metrics, 1 if done else config.log_every)
        if done:
            break
    vae.eval().requires_grad_(False)
    return vae_psnr(vae, held_out)


def _random_crops(images: Any, pool: int, n: int, size: int, gen: Any, masks: Any = None) -> tuple[Any, Any]:
    """``n`` random ``size`` px crops, on the VAE's 4 px grid, of the first ``pool`` images, in [-1, 1].

    Returns:
        ``(crops, mask_crops)``: ``(n, 3, size, size)`` and the same crops of ``masks`` as ``(n, 1, size, size)``
        coverage in [0, 1] (``None`` without ``masks``).
    """
    import torch

    idx = torch.randint(0, pool, (n,), generator=gen)
    offsets = torch.randint(0, (64 - size) // 4 + 1, (n, 2), generator=gen) * 4
    pairs = list(zip(idx.tolist(), offsets.tolist(), strict=True))
    crops = torch.stack([images[i, :, y : y + size, x : x + size] for i, (y, x) in pairs])
    if masks is None:
        return _to_unit(crops), None
    covered = torch.stack([masks[i, y : y + size, x : x + size] for i, (y, x) in pairs])
    return _to_unit(crops), covered[:, None].float() / 255.0


def _weighted_l1(recon: Any, target: Any, coverage: Any, product_weight: float) -> Any:
    """Mean L1 weighted ``1 + product_weight * coverage`` per pixel (normalised to mean 1 per batch)."""
    err = (recon - target).abs()
    if coverage is None or product_weight == 0:
        return err.mean()
    weights = 1.0 + product_weight * coverage
    return (err * weights).mean() / weights.mean()


def vae_psnr(vae: Any, x: Any) -> float:
    """PSNR in dB of the VAE's reconstruction (from the posterior mean) of ``x`` in [-1, 1]."""
    import torch

    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def encode_latents(vae: Any, images: Any, batch: int = 256) -> Any:
    """Encode all images (posterior means), set ``vae.config.scaling_factor`` to 1/std, return scaled latents."""
    import torch

    chunks = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            chunks.append(vae.encode(_to_unit(images[i : i + batch])).latent_dist.mean)
    latents = torch.cat(chunks)  # (N, C, 16, 16)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    logger.info("latents: mean %.3f std %.3f -> scaling_factor %.4f", latents.mean(), latents.std(), scale)
    return (latents * scale).contiguous()


# --- stage 3: UNet + text encoder -------------------------------------------------------------------------------


def loss_weights(masks: Any, grid: int, product_weight: float) -> Any:
    """Per-latent-cell loss weights ``1 + product_weight * coverage``, normalised to mean 1 per image.

    Args:
        masks: ``(N, H, W)`` uint8 product coverage from :func:`render_dataset`.
        grid: The latent grid's side (``H`` divided by the VAE's downsampling).
        product_weight: Extra weight of a fully covered cell; 0 gives all ones.

    Returns:
        A ``(N, 1, grid, grid)`` float tensor.
    """
    import torch

    coverage = torch.nn.functional.adaptive_avg_pool2d(masks[:, None].float() / 255.0, grid)
    weights = 1.0 + product_weight * coverage
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def train_unet(
    pipe: Any,
    latents: Any,
    captions: list[str],
    config: PretrainConfig,
    tracker: Any,
    weights: Any = None,
) -> float:
    """Train UNet and text encoder jointly on cached latents; copy the EMA weights in at the end.

    The target is v or epsilon, as the scheduler's ``prediction_type`` says; ``weights`` (from
    :func:`loss_weights`, one per latent cell) weight the squared error, plain when omitted.

    Returns:
        The mean loss of the last ``log_every`` steps.
    """
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, 77)
    empty = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids  # (1, 77)
    params = [*unet.parameters(), *text_encoder.parameters()]
    for model in (unet, text_encoder):
        model.train().requires_grad_(True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=config.unet_learning_rate, weight_decay=1e-2, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps, config.unet_steps))
    gen = torch.Generator().manual_seed(config.seed + 2)
    recent: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, config.unet_steps + 1):
        idx = torch.randint(0, latents.shape[0], (config.unet_batch_size,), generator=gen)
        x0 = latents[idx].float()
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(len(idx), generator=gen) < config.caption_dropout] = empty[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = unet(
            noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(batch_ids)[0]
        ).sample
        v_pred = noise_sched.config.prediction_type == "v_prediction"
        target = noise_sched.get_velocity(x0, noise, t) if v_pred else noise
        err = (pred - target).pow(2)
        if weights is not None:
            err = err * weights[idx]
        per_example = err.mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            snr = compute_snr(noise_sched, t)
            per_example = per_example * snr.clamp(max=config.snr_gamma) / (snr + 1 if v_pred else snr)
        loss = per_example.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"UNet loss is {loss.item()} at step {step}; lower unet_learning_rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        recent = [*recent[-(config.log_every - 1) :], loss.item()]
        metrics = {
            "unet/loss": loss.item(),
            "unet/grad_norm": float(grad_norm),
            "unet/lr": sched.get_last_lr()[0],
            "unet/s_per_step": (time.perf_counter() - t0) / step,
        }
        _log(tracker, "unet", step, config.unet_steps, metrics, config.log_every)
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    for model in (unet, text_encoder):
        model.eval().requires_grad_(False)
    return sum(recent) / len(recent)


# --- stage 4: decoder --------------------------------------------------------------------------------------------


def finetune_decoder(
    vae: Any, images: Any, latents: Any, config: PretrainConfig, tracker: Any, masks: Any = None
) -> float:
    """Fine-tune the VAE decoder alone on ``(latent, image)`` pairs; return the held-out PSNR (dB) afterwards.

    The encoder stays frozen, so the latents the UNet learned on keep their meaning: this only sharpens how they
    are drawn (the same idea as Stable Diffusion's fine-tuned-decoder VAEs). Full 64 px images, L1 loss weighted
    inside the products' ``masks`` by ``config.vae_product_weight``, as in the VAE stage.
    """
    import torch

    held_out = _to_unit(images[-32:])  # the VAE stage's held-out images stay held out
    if config.decoder_steps == 0:
        return vae_psnr(vae, held_out)
    gen = torch.Generator().manual_seed(config.seed + 3)
    pool = images.shape[0] - 32
    scale = vae.config.scaling_factor
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=config.decoder_learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps, config.decoder_steps))
    t0 = time.perf_counter()
    for step in range(1, config.decoder_steps + 1):
        idx = torch.randint(0, pool, (config.vae_batch_size,), generator=gen)
        recon = vae.decode(latents[idx] / scale).sample
        coverage = None if masks is None else masks[idx, None].float() / 255.0
        loss = _weighted_l1(recon, _to_unit(images[idx]), coverage, config.vae_product_weight)
        if not torch.isfinite(loss):
            raise TrainingError(f"decoder loss is {loss.item()} at step {step}; lower decoder_learning_rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        metrics = {"decoder/l1": loss.item(), "decoder/s_per_step": (time.perf_counter() - t0) / step}
        if step % 100 == 0 or step == config.decoder_steps:
            metrics["decoder/psnr_db"] = vae_psnr(vae, held_out)
        _log(tracker, "decoder", step, config.decoder_steps, metrics, config.log_every)
    vae.eval().requires_grad_(False)
    return vae_psnr(vae, held_out)


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
