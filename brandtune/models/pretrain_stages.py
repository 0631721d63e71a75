"""The training stages of ``builtin:tiny``'s pretraining (:func:`brandtune.models.pretrain.pretrain`): the VAE
(stage 2), the UNet with the text encoder on cached latents (stage 3) and the decoder fine-tune (stage 4). Each is
seeded, logs its curves to the run's tracker and imports torch inside the function."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from brandtune.config import PretrainConfig
from brandtune.errors import TrainingError
from brandtune.models.pretrain_data import to_unit

logger = logging.getLogger(__name__)


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
    held_out = to_unit(images[-32:])
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
        return to_unit(crops), None
    covered = torch.stack([masks[i, y : y + size, x : x + size] for i, (y, x) in pairs])
    return to_unit(crops), covered[:, None].float() / 255.0


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
            chunks.append(vae.encode(to_unit(images[i : i + batch])).latent_dist.mean)
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


def _caption_ids(tokenizer: Any, captions: list[str]) -> tuple[Any, Any]:
    """The captions' token ids ``(N, 77)`` and the empty caption's ``(1, 77)`` (what a dropped caption becomes)."""
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
    return ids, empty


def _unet_loss(
    pipe: Any,
    noise_sched: Any,
    latents: Any,
    caption_ids: tuple[Any, Any],
    weights: Any,
    config: PretrainConfig,
    gen: Any,
) -> Any:
    """One batch's loss: draw latents, drop captions, noise at random timesteps, and weight the v/epsilon error.

    The draws from ``gen`` (batch, caption dropout, noise, timesteps) come in this order, so a seed gives one run.
    """
    import torch
    from diffusers.training_utils import compute_snr

    ids, empty = caption_ids
    idx = torch.randint(0, latents.shape[0], (config.unet_batch_size,), generator=gen)
    x0 = latents[idx].float()
    batch_ids = ids[idx].clone()
    batch_ids[torch.rand(len(idx), generator=gen) < config.caption_dropout] = empty[0]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
    pred = pipe.unet(
        noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=pipe.text_encoder(batch_ids)[0]
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
    return per_example.mean()


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

    unet, text_encoder = pipe.unet, pipe.text_encoder
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ids, empty = _caption_ids(pipe.tokenizer, captions)
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
        loss = _unet_loss(pipe, noise_sched, latents, (ids, empty), weights, config, gen)
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

    held_out = to_unit(images[-32:])  # the VAE stage's held-out images stay held out
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
        loss = _weighted_l1(recon, to_unit(images[idx]), coverage, config.vae_product_weight)
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
