"""``TrainConfig``: every knob of a LoRA training run, with its default and what it does."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from brandtune.config import StrictModel

DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
#: The UNet's feed-forward layers, the projections into and out of its transformer blocks and its resnets' 3x3
#: convolutions: everything but attention. On builtin:tiny a brand LoRA on these moves a small product's colours,
#: and attention LoRA, alone or added to these, does not (docs/builtin-tiny.md, "A brand fine-tune on it").
NON_ATTENTION_UNET_TARGETS = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
DEFAULT_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class TrainConfig(StrictModel):
    """A LoRA training job. Defaults suit the built-in tiny model on a laptop CPU."""

    # What to train on.
    brand: str = Field(description="Brand slug; its brand.yaml gives the trigger, base model and prompts.")
    dataset: str | None = Field(
        default=None,
        description="Dataset fingerprint (or unique prefix). Default: the brand's latest dataset.",
    )
    base_model: str | None = Field(
        default=None,
        description="Base model: builtin:tiny, a diffusers folder or a hub id. Default: brand.yaml.",
    )
    output_dir: Path | None = Field(
        default=None,
        description="Run folder (checkpoints/, adapter/). Default: <home>/runs/<brand>/<config hash>, so the "
        "same job resumes into the same folder.",
    )
    # LoRA.
    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r: size of the low-rank update.")
    alpha: float | None = Field(
        default=None, gt=0, description="LoRA alpha (scale = alpha / r). Default: rank."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNET_TARGETS),
        min_length=1,
        description="UNet module names (or suffixes) that get LoRA layers.",
    )
    train_text_encoder: bool = Field(
        default=False, description="Also train LoRA layers in the text encoder(s)."
    )
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEXT_TARGETS),
        min_length=1,
        description="Text-encoder module names that get LoRA layers when train_text_encoder is on.",
    )
    # Optimisation.
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        default="constant", description="Learning-rate schedule (warm-up applies to all but constant)."
    )
    lr_warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    max_train_steps: int = Field(default=200, ge=1, description="Optimizer steps to train for.")
    train_batch_size: int = Field(default=4, ge=1, description="Images per process per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = Field(
        default="adamw",
        description="adamw (torch), adamw8bit (needs bitsandbytes), prodigy (needs prodigyopt).",
    )
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(default=0.999, gt=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    # Diffusion loss.
    resolution: int | None = Field(
        default=None, ge=32, le=4096, description="Training size in px. Default: the dataset's resolution."
    )
    snr_gamma: float | None = Field(
        default=None, gt=0, description="Min-SNR loss weighting gamma (5.0 is usual)."
    )
    noise_offset: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Noise offset (helps very dark/light)."
    )
    random_flip: bool = Field(
        default=False, description="Horizontally flip half of the images (cached both ways)."
    )
    # DreamBooth prior preservation.
    prior_preservation: bool = Field(
        default=False, description="Mix in images of the plain class, made by the base model, to limit drift."
    )
    class_prompt: str | None = Field(
        default=None, description="Prompt for class images. Default: 'a photo of a <subject>'."
    )
    num_class_images: int = Field(default=16, ge=1, description="Class images to generate (cached).")
    prior_loss_weight: float = Field(default=1.0, ge=0, description="Weight of the class-image loss.")
    # Precision and speed.
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no",
        description="Mixed precision. fp16 needs a GPU; bf16 needs a GPU or CPU that supports it.",
    )
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory in the UNet.")
    cache_latents: bool = Field(
        default=True, description="Encode images and captions once and cache them on disk (much faster)."
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for torch. Default: all cores."
    )
    seed: int = Field(default=0, ge=0, description="Seed for data order, noise, timesteps and LoRA init.")
    # Validation, checkpoints, outputs.
    validation_prompts: list[str] | None = Field(
        default=None,
        description="Prompts to sample during training. Default: the brand's evaluation prompts.",
    )
    validation_steps: int = Field(
        default=0, ge=0, description="Sample validation images every N steps (0: end only)."
    )
    num_validation_images: int = Field(default=1, ge=1, le=16, description="Images per validation prompt.")
    validation_inference_steps: int = Field(
        default=20, ge=1, description="Sampler steps for validation images."
    )
    checkpointing_steps: int = Field(
        default=50, ge=0, description="Write a resumable checkpoint every N steps."
    )
    checkpoints_total_limit: int = Field(default=2, ge=1, description="Keep at most this many checkpoints.")
    resume: Literal["latest"] | None = Field(
        default=None, description="'latest': continue from the newest complete checkpoint in output_dir."
    )
    export_kohya: bool = Field(default=False, description="Also write a kohya-format LoRA for A1111/ComfyUI.")
    log_every: int = Field(default=10, ge=1, description="Send metrics to MLflow every N steps (batched).")
    nan_check: bool = Field(default=True, description="Stop on a NaN/inf loss, naming the step.")

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        if self.lr_warmup_steps and self.lr_warmup_steps >= self.max_train_steps:
            raise ValueError(
                f"lr_warmup_steps ({self.lr_warmup_steps}) must be below max_train_steps ({self.max_train_steps})"
            )
        return self

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    def identity(self) -> dict:
        """The fields that define what is trained (not where, nor whether it resumes): the run's hash input."""
        return self.model_dump(
            mode="json", exclude={"output_dir", "resume", "log_every", "num_threads", "validation_steps"}
        )
