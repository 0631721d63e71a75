"""``PretrainConfig``: how ``builtin:tiny`` is pretrained from scratch (:func:`brandtune.models.pretrain.pretrain`)."""

from __future__ import annotations

from pydantic import Field

from brandtune.config._base import StrictModel


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
