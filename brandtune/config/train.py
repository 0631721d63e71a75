"""``TrainConfig``: every knob of a LoRA training run, with its default and what it does; and ``TrainingDefaults``,
what a base model recommends for the knobs that depend on it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from brandtune.config._base import StrictModel

LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
#: The UNet's attention projections: the diffusers training scripts' LoRA targets.
ATTENTION_UNET_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: LoRA on the attention projections: what a base without its own recommendation gets (the diffusers scripts' choice).
DEFAULT_UNET_TARGETS = list(ATTENTION_UNET_TARGETS)
#: The UNet's feed-forward layers, the projections into and out of its transformer blocks and its resnets' 3x3
#: convolutions: everything but attention. On builtin:tiny a brand LoRA on these moves a small product's colours,
#: and attention LoRA, alone or added to these, does not (docs/builtin-tiny.md, "A brand fine-tune on it"), so
#: builtin:tiny recommends them (brandtune/assets/builtin_tiny/brandtune_training.json).
NON_ATTENTION_UNET_TARGETS = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]
DEFAULT_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
#: A flow-matching transformer's (FLUX, SD3) attention projections, the joint attention's text-stream ones
#: (``add_q/k/v_proj``, ``to_add_out``) included: what a FLUX or SD3 base without its own recommendation gets.
ATTENTION_TRANSFORMER_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
#: The transformers' MLP layers, for LoRA beyond attention (add them to target_modules): the joint blocks'
#: image and text feed-forwards, and FLUX's single blocks' MLP input and fused output.
MLP_TRANSFORMER_TARGETS: tuple[str, ...] = (
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
)
#: Default ``background_weight``, measured on tests/training/test_masked_loss.py's data (one striped product on 8
#: random-noise backgrounds, builtin:tiny, 64 px, 100 steps of 8, lr 5e-3, seeds 0-2): the denoiser's error on the
#: product region fell from 0.194 (unmasked) to 0.153 / 0.154 / 0.158 / 0.167 at background weight 0 / 0.05 / 0.1 /
#: 0.25, and on the background it was 0.386 / 0.314 / 0.304 / 0.293 (base model 0.361, unmasked 0.285). 0.05 keeps
#: nearly all of the product gain of 0 without making the background worse than the base model's. On the demo
#: (acme's cutouts and studio/city shots, background_target 'base', training seeds 0-2) 0.05 brought the palette
#: distance 31-37% below the base model's and kept the settings apart; 0.25 only 27-34%, 1.0 13-19%
#: (docs/builtin-tiny.md).
BACKGROUND_WEIGHT = 0.05
WeightingScheme = Literal["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"]
#: The fields whose empty value means "what the base recommends" (``ResolvedBase.training_defaults``).
BASE_RECOMMENDED = (
    "target_modules",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "max_train_steps",
    "train_batch_size",
)


class TrainingDefaults(BaseModel):
    """What a base model recommends for a LoRA fine-tune on it: the settings that depend on the base.

    A training config leaves these fields empty to take the base's recommendation (explicit values win). A base
    folder may ship one as ``brandtune_training.json`` (any subset of the fields; the rest come from
    :data:`brandtune.models.resolve.GENERIC_TRAINING_DEFAULTS`), which travels with the folder when it is copied
    or exported. Without one a base gets the generic values: LoRA on the attention projections, as the diffusers
    training scripts do.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_modules: tuple[str, ...] = Field(
        default=ATTENTION_UNET_TARGETS,
        min_length=1,
        description="UNet module names (or suffixes) that get LoRA.",
    )
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0, description="Peak learning rate.")
    lr_scheduler: LrScheduler = Field(default="constant", description="Learning-rate schedule.")
    lr_warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Linear warm-up steps, for max_train_steps steps (scaled with the steps).",
    )
    max_train_steps: int = Field(default=200, ge=1, description="Optimizer steps the schedule is made for.")
    train_batch_size: int = Field(default=4, ge=1, description="Images per process per micro-batch.")
    source: str = Field(
        default="brandtune's generic defaults", description="Where this recommendation comes from (for logs)."
    )

    @model_validator(mode="after")
    def _warmup_below_steps(self) -> TrainingDefaults:
        if self.lr_warmup_steps >= self.max_train_steps:
            raise ValueError(
                f"lr_warmup_steps ({self.lr_warmup_steps}) must be below max_train_steps ({self.max_train_steps})"
            )
        return self


class TrainConfig(StrictModel):
    """A LoRA training job.

    The settings that depend on the base model (LoRA targets, learning rate and schedule, warm-up, steps, batch) are
    empty by default, meaning "what the base recommends" (:class:`TrainingDefaults`);
    :meth:`with_base_defaults` fills them once, in the training plan, and the filled config is what is hashed,
    logged and trained. Explicit values always win.
    """

    # What to train on.
    brand: str = Field(description="Brand slug; its brand.yaml gives the trigger, base model and prompts.")
    dataset: str | None = Field(
        default=None,
        description="Dataset fingerprint (or unique prefix). Default: the brand's latest dataset.",
    )
    base_model: str | None = Field(
        default=None,
        description="Base model: builtin:tiny, a local diffusers folder or a hub id. Empty: brand.yaml's.",
    )
    output_dir: Path | None = Field(
        default=None,
        description="Run folder (checkpoints/, adapter/). Default: a new folder per training, "
        "<home>/runs/<brand>/<config hash>-<n>; a retry of the same invocation goes back into its own.",
    )
    # LoRA.
    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r: size of the low-rank update.")
    alpha: float | None = Field(
        default=None, gt=0, description="LoRA alpha (scale = alpha / r). Default: rank."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="UNet layers that get LoRA (names or suffixes, e.g. to_q, ff.net.2, conv1). Empty: the "
        "base's recommendation (builtin:tiny: its non-attention layers; others: to_q, to_k, to_v, to_out.0).",
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
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1.0,
        description="Peak learning rate. Empty: the base's recommendation (builtin:tiny: 8e-3; others 1e-3).",
    )
    lr_scheduler: LrScheduler | None = Field(
        default=None,
        description="Learning-rate schedule (warm-up applies to all but constant). Empty: the base's "
        "recommendation (builtin:tiny: cosine).",
    )
    lr_warmup_steps: int | None = Field(
        default=None,
        ge=0,
        description="Linear warm-up steps. Empty: the base's recommendation, scaled when max_train_steps "
        "differs from the steps it recommends (builtin:tiny: 20 of 300).",
    )
    max_train_steps: int | None = Field(
        default=None,
        ge=1,
        description="Optimizer steps to train for. Empty: the base's recommendation (builtin:tiny: 300).",
    )
    train_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Images per process per micro-batch. Empty: the base's recommendation (builtin:tiny: 8).",
    )
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
    ema_decay: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the LoRA weights with this decay (0.99-0.999 for "
        "short runs): the adapter and the validation images are the average. The decay after step n is "
        "min(ema_decay, (1 + n) / (10 + n)). Empty or 0: off, the adapter is the last step's weights.",
    )
    # Diffusion loss.
    resolution: int | None = Field(
        default=None, ge=32, le=4096, description="Training size in px. Empty: the dataset's resolution."
    )
    snr_gamma: float | None = Field(
        default=None, gt=0, description="Min-SNR loss weighting gamma (5.0 is usual)."
    )
    noise_offset: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Noise offset (helps very dark/light)."
    )
    # Flow matching (FLUX, SD3); the DDPM families ignore these.
    weighting_scheme: WeightingScheme = Field(
        default="logit_normal",
        description="Flow-matching timestep sampling and loss weighting (SD3 paper): logit_normal or mode sample "
        "timesteps, sigma_sqrt or cosmap weight the loss, none is uniform and unweighted.",
    )
    logit_mean: float = Field(default=0.0, ge=-10.0, le=10.0, description="Mean of logit_normal sampling.")
    logit_std: float = Field(default=1.0, gt=0.0, le=10.0, description="Std of logit_normal sampling.")
    mode_scale: float = Field(default=1.29, ge=-10.0, le=10.0, description="Scale of mode sampling.")
    flow_shift: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description="Shift of the flow-matching noise levels (higher: noisier). Empty: the base scheduler's "
        "(SD3: 3.0; FLUX: 1, it shifts by image size when sampling).",
    )
    guidance: float = Field(
        default=3.5,
        ge=0.0,
        le=30.0,
        description="Embedded guidance value FLUX.1-dev trains with (as diffusers' FLUX script); models without a "
        "guidance embedding (schnell, SD3, the UNets) ignore it.",
    )
    max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="T5 tokens per caption (FLUX, SD3). Empty: FLUX 512, SD3 256, at most what the T5 "
        "tokenizer allows. Generation uses the same length.",
    )
    masked_loss: bool = Field(
        default=True,
        description="Weight the loss by the dataset's product masks where it has them (1 inside the product, "
        "background_weight outside; an image without a mask weighs 1 everywhere). No effect on a dataset "
        "without masks.",
    )
    background_weight: float = Field(
        default=BACKGROUND_WEIGHT,
        ge=0.0,
        le=1.0,
        description="Per-pixel loss weight outside the product mask (1 inside), with masked_loss. 0 ignores the "
        "backdrop entirely; 1 is the plain unmasked loss. Default chosen by measurement (see "
        "BACKGROUND_WEIGHT).",
    )
    background_target: Literal["photo", "base"] = Field(
        default="base",
        description="What the loss pulls the background (outside the product mask) towards, with masked_loss: "
        "'photo', the training photo's own backdrop; 'base', what the base model itself predicts there for the "
        "same noisy input and caption, so the adapter learns the product and leaves the settings the base draws "
        "alone (one more forward pass of the denoiser per step, without gradients; measured on the demo: the "
        "settings kept apart as the base draws them, where 'photo' let the cutouts' white and the city's night "
        "spill into every setting).",
    )
    aspect_buckets: bool = Field(
        default=True,
        description="Train each photo in the aspect-ratio bucket nearest its own (about resolution**2 pixels, sides "
        "multiples of the base's resolution multiple), batches within one bucket; off: centre-crop every photo "
        "to the resolution square. No effect on a dataset of square images.",
    )
    bucket_max_aspect: float = Field(
        default=2.0,
        ge=1.0,
        le=4.0,
        description="The most elongated bucket, as long side / short side (2.0: from 1:2 to 2:1).",
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
    caption_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the instance images trained on the empty caption instead of their own, drawn anew "
        "each step (kohya's caption_dropout_rate): keeps the base's unconditional prediction, which "
        "classifier-free guidance needs, from drifting. Class images keep their prompt. 0: off.",
    )
    # Precision and speed.
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no",
        description="Mixed precision: fp16 needs a GPU; bf16 a GPU or CPU that supports it.",
    )
    cpu_bf16: bool = Field(
        default=False,
        description="On a CPU that does bf16 matrix maths natively (Intel AMX-BF16, detected, never assumed), train "
        "the denoiser's step under bf16 autocast when mixed_precision is 'no'; weights, gradients and optimizer "
        "state stay fp32. Off by default: on builtin:tiny it keeps the quality but is slower (its layers are too "
        "small for AMX to pay for the casts; docs/benchmarks.md).",
    )
    compile: Literal["none", "regional", "full", "reduce-overhead"] = Field(
        default="none",
        description="torch.compile the denoiser: 'regional' compiles its repeated blocks once each (diffusers' "
        "compile_repeated_blocks, else every block of its block lists): seconds of compile time for most of the "
        "speed-up on a GPU; 'full' the whole model (minutes); 'reduce-overhead' the whole model with CUDA graphs "
        "(torch.compile's mode of that name: the step replays recorded kernel launches; a CUDA GPU and one image "
        "size: aspect_buckets off or photos of one aspect, no class images of another size); 'none' runs "
        "eagerly. On the CPU's tiny models the compile time outweighs the gain (docs/benchmarks.md).",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for GPU memory (recompute the UNet's activations)."
    )
    cache_latents: bool = Field(
        default=True, description="Encode images and captions once and cache them on disk (much faster)."
    )
    num_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch. Empty: OMP_NUM_THREADS where set, else all cores (shared by the processes).",
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
        default=20, ge=1, le=200, description="Sampler steps for the validation images."
    )
    checkpointing_steps: int = Field(
        default=50,
        ge=0,
        description="Write a resumable checkpoint every N steps (a retry resumes from the last one); 0: none.",
    )
    checkpoints_total_limit: int = Field(default=2, ge=1, description="Keep at most this many checkpoints.")
    resume: str | None = Field(
        default=None,
        description="Continue a training the user names: 'latest' (the newest unfinished run of this config, or "
        "output_dir's), or the path of a checkpoint folder or run folder. Empty: a new training; only a retry "
        "of the same invocation resumes by itself.",
    )
    invocation_id: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Who started this training (set by the launcher: a Prefect flow run, else a fresh id). A "
        "checkpoint records it; a training resumes on its own only checkpoints of its own invocation (a retry).",
    )
    export_kohya: bool = Field(default=False, description="Also write a kohya-format LoRA for A1111/ComfyUI.")
    log_every: int = Field(default=10, ge=1, description="Send metrics to MLflow every N steps (batched).")
    nan_check: bool = Field(default=True, description="Stop on a NaN/inf loss, naming the step.")

    @field_validator("resume")
    @classmethod
    def _resume(cls, value: str | None) -> str | None:
        if value is None or value == "latest":
            return value
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"resume {value!r} is neither 'latest' nor an existing folder; give 'latest', a checkpoint "
                "folder (<run>/checkpoints/checkpoint-<step>) or a run folder"
            )
        return str(path.absolute())

    @field_validator("ema_decay")
    @classmethod
    def _ema_off(cls, value: float | None) -> float | None:
        return value or None  # 0 is off, as empty is: one spelling, one config hash

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        steps, warmup = self.max_train_steps, self.lr_warmup_steps
        if steps is not None and warmup and warmup >= steps:
            raise ValueError(f"lr_warmup_steps ({warmup}) must be below max_train_steps ({steps})")
        return self

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    def with_base_defaults(self, defaults: TrainingDefaults) -> TrainConfig:
        """This config with every empty base-dependent field filled from the base's recommendation.

        The warm-up is the base's share of its recommended steps: when max_train_steps is set and differs, the
        recommended warm-up is scaled to it (20 of 300 becomes 2 of 30), and always stays below the steps.

        Raises:
            ConfigError: an explicit lr_warmup_steps is not below the (recommended) max_train_steps.
        """
        from brandtune.errors import ConfigError

        filled = {
            name: getattr(defaults, name) if getattr(self, name) is None else getattr(self, name)
            for name in BASE_RECOMMENDED
            if name != "lr_warmup_steps"
        }
        filled["target_modules"] = list(filled["target_modules"])
        steps = filled["max_train_steps"]
        warmup = self.lr_warmup_steps
        if warmup is None:
            warmup = defaults.lr_warmup_steps * steps // defaults.max_train_steps
            warmup = min(warmup, steps - 1)
        elif warmup >= steps:
            raise ConfigError(
                f"lr_warmup_steps ({warmup}) must be below max_train_steps ({steps}, {defaults.source}); "
                "lower the warm-up or set max_train_steps"
            )
        return self.model_copy(update={**filled, "lr_warmup_steps": warmup})

    @property
    def is_resolved(self) -> bool:
        """Whether every base-dependent field has a value (true after :meth:`with_base_defaults`)."""
        return all(getattr(self, name) is not None for name in BASE_RECOMMENDED)

    def identity(self) -> dict:
        """The fields that define what is trained (not where, who, nor whether it resumes): the hash input.

        Call it on a resolved config (:meth:`with_base_defaults`): an empty field would hash as "whatever the
        base says", and the same config on another base recommendation must hash differently.
        """
        if not self.is_resolved:
            raise ValueError("identity() of a config whose base-dependent fields are empty; resolve it first")
        exclude = {
            "output_dir",
            "resume",
            "invocation_id",
            "log_every",
            "num_threads",
            "validation_steps",
            # when state is saved, not what is trained: a resumed run is bit-identical to an unbroken one
            "checkpointing_steps",
            "checkpoints_total_limit",
        }
        if self.ema_decay is None:
            exclude.add("ema_decay")  # off: a config from before EMA existed keeps its hash
        if not self.cpu_bf16:
            exclude.add("cpu_bf16")  # the default: a config from before the knob existed keeps its hash
        if self.compile == "none":
            exclude.add("compile")  # likewise
        if not self.caption_dropout:
            exclude.add("caption_dropout")  # off: a config from before caption dropout existed keeps its hash
        return self.model_dump(mode="json", exclude=exclude)
