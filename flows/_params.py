"""Typed flow parameters: what the Prefect UI turns into a form (descriptions, bounds, dropdowns).

Each model is a small, UI-facing subset of a library config (:class:`~brandtune.training.TrainConfig`, the
evaluation and generation configs); the flow converts it to the full config, so validation rules live in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from brandtune.evaluation.gate import GateConfig

BrandSlug = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Brand slug: the folder under data/brands that holds brand.yaml and photos/ (e.g. 'acme').",
    ),
]
ModelRef = Annotated[
    str,
    Field(
        min_length=1,
        description="Registered adapter to use: an alias (candidate, champion, previous-champion) or a version "
        "number such as '3'.",
    ),
]
AccelerateConfig = Literal["none", "single_gpu", "multi_gpu_ddp", "fsdp", "cpu_2proc"]


class FlowParams(BaseModel):
    """Base of the flow parameter groups: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class TrainingParams(FlowParams):
    """How to fine-tune the LoRA adapter. Empty fields take the base model's recommendation."""

    base_model: str | None = Field(
        default=None,
        description="Base model: builtin:tiny, a local diffusers folder or a hub id. Empty: brand.yaml's.",
    )
    max_train_steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Optimizer steps to train for. Empty: the base's recommendation (builtin:tiny: 300).",
    )
    train_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Images per process per step. Empty: the base's recommendation (builtin:tiny: 8).",
    )
    rank: int = Field(default=8, ge=1, le=256, description="LoRA rank: size of the low-rank update.")
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1.0,
        description="Peak learning rate. Empty: the base's recommendation (builtin:tiny: 5e-3; others 1e-3).",
    )
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="UNet layers that get LoRA (names or suffixes, e.g. to_q, ff.net.2, conv1). Empty: the "
        "base's recommendation (builtin:tiny: its non-attention layers; others: to_q, to_k, to_v, to_out.0).",
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] | None = Field(
        default=None,
        description="Learning-rate schedule. Empty: the base's recommendation (builtin:tiny: cosine).",
    )
    lr_warmup_steps: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Linear warm-up steps. Empty: the base's recommendation, scaled to max_train_steps.",
    )
    resolution: int | None = Field(
        default=None, ge=32, le=4096, description="Training size in px. Empty: the dataset's resolution."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no", description="Mixed precision: fp16 needs a GPU; bf16 a GPU or CPU that supports it."
    )
    train_text_encoder: bool = Field(default=False, description="Also train LoRA layers in the text encoder.")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for GPU memory.")
    seed: int = Field(default=0, ge=0, description="Seed for data order, noise and LoRA init.")
    checkpointing_steps: int = Field(
        default=50, ge=1, description="Write a resumable checkpoint every N steps (a retry resumes from it)."
    )
    validation_inference_steps: int = Field(
        default=20, ge=1, le=200, description="Sampler steps for the validation images made at the end."
    )
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch. Empty: all.")
    num_processes: int = Field(
        default=1, ge=1, le=64, description="Training processes (one per GPU; more than 1 runs DDP)."
    )
    accelerate_config: AccelerateConfig = Field(
        default="none",
        description="accelerate config from configs/accelerate/ (multi-GPU DDP, FSDP). 'none': one process, or "
        "plain DDP when num_processes > 1.",
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Retry a failed training this many times; a retry (same flow run) resumes from its own "
        "last checkpoint instead of starting over.",
    )
    retry_delay_seconds: float = Field(
        default=10, ge=0, le=3600, description="Seconds to wait before a retry of the training."
    )
    timeout_minutes: float | None = Field(
        default=None, gt=0, description="Stop training (and its whole process tree) after this many minutes."
    )

    def train_config(self, brand: str, dataset: str | None) -> Any:
        """The full :class:`~brandtune.training.TrainConfig`; empty fields stay empty (the base's recommendation).

        It resumes nothing by itself: the training task sets the invocation (this flow run), so that only a
        retry of this flow run continues its checkpoints.
        """
        from brandtune.training import TrainConfig

        fields = self.model_dump(
            exclude={
                "num_processes",
                "accelerate_config",
                "retries",
                "retry_delay_seconds",
                "timeout_minutes",
            },
            exclude_none=True,
        )
        return TrainConfig(brand=brand, dataset=dataset, **fields)


class EvaluationParams(FlowParams):
    """How to evaluate: brand.yaml's fixed evaluation prompts x these seeds, one sampler for every model."""

    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3],
        min_length=1,
        max_length=64,
        description="Fixed seeds per prompt.",
    )
    scheduler: Literal["ddim", "euler", "dpm++", "default"] = Field(
        default="ddim", description="Sampler, the same for every model compared."
    )
    num_inference_steps: int = Field(default=20, ge=1, le=200, description="Sampler steps per image.")
    guidance_scale: float = Field(default=4.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    batch_size: int = Field(default=8, ge=1, le=64, description="Images per pipeline call.")
    include_base: bool = Field(
        default=True, description="Also score the base model without an adapter (a floor)."
    )
    gate: GateConfig | None = Field(
        default=None,
        description="Promotion rules; all must pass for the candidate to become @champion. Empty: the default "
        "gate plus the brand's own bars (gate: in brand.yaml). Default gate: the first champion must be closer "
        "to the palette than the base model on the same prompts and seeds (paired bootstrap, 95%) with no more "
        "technical failures; later ones no worse than the champion (palette distance by at most 2, technical "
        "checks not at all). Rules set here replace the default and the brand's bars.",
    )

    def eval_config(self, brand: str, candidate: str, against: str | None, promote: bool) -> Any:
        """The full :class:`~brandtune.evaluation.job.EvalConfig`."""
        from brandtune.evaluation.job import EvalConfig

        return EvalConfig(
            brand=brand,
            candidate=candidate,
            against=against,
            promote=promote,
            gate=self.gate,
            **self.model_dump(exclude={"gate"}),
        )


class GenerationParams(FlowParams):
    """Sampler settings for a campaign."""

    negative_prompt: str = Field(default="", description="What the images should not show.")
    scheduler: Literal["ddim", "euler", "dpm++", "default"] = Field(default="ddim", description="Sampler.")
    num_inference_steps: int = Field(default=20, ge=1, le=200, description="Sampler steps per image.")
    guidance_scale: float = Field(default=4.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    seed: int = Field(default=0, ge=0, description="Seed of variation 0; variation k uses seed + k.")
    batch_size: int = Field(default=8, ge=1, le=64, description="Images per pipeline call.")
    max_images: int = Field(default=500, ge=1, le=10_000, description="Refuse campaigns larger than this.")
    fuse: bool = Field(default=True, description="Fuse the adapter into the weights (faster).")
    output_dir: str | None = Field(
        default=None,
        description="Folder on the worker to write into (re-running skips images already there). Empty: "
        "BRANDTUNE_HOME/campaigns/{brand}/{time}-{prompt}.",
    )

    def generate_config(
        self, brand: str, prompt: str, settings: list[str], variations: int, model: str
    ) -> Any:
        """The full :class:`~brandtune.generation.GenerateConfig`."""
        from brandtune.generation import GenerateConfig
        from brandtune.sampling import SamplerConfig

        sampler = SamplerConfig(
            scheduler=self.scheduler,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            negative_prompt=self.negative_prompt,
        )
        return GenerateConfig(
            brand=brand,
            prompt=prompt,
            settings=settings,
            variations=variations,
            model=model,
            sampler=sampler,
            seed=self.seed,
            batch_size=self.batch_size,
            max_images=self.max_images,
            fuse=self.fuse,
            output_dir=self.output_dir,
        )
