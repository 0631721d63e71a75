"""Typed flow parameters: what the Prefect UI turns into a form (descriptions, bounds, dropdowns).

Each model takes its knobs from a library config (:func:`~brandtune.config.derive_model`): a field's type, bounds,
default and description are the library's, written once there. What only a flow has (how many processes, retries,
a timeout) is declared here, once. ``tests/config/test_flow_params.py`` checks that the two never drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from brandtune.config import (
    SLUG_PATTERN,
    EvalConfig,
    GenerateConfig,
    TrainConfig,
    derive_model,
)

BrandSlug = Annotated[
    str,
    Field(
        pattern=SLUG_PATTERN,
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

#: The TrainConfig fields a flow run may set, in form order; the rest keep the library's defaults.
TRAINING_FIELDS = (
    "base_model",
    "max_train_steps",
    "train_batch_size",
    "rank",
    "learning_rate",
    "target_modules",
    "lr_scheduler",
    "lr_warmup_steps",
    "resolution",
    "weighting_scheme",
    "guidance",
    "max_sequence_length",
    "mixed_precision",
    "train_text_encoder",
    "gradient_checkpointing",
    "seed",
    "checkpointing_steps",
    "validation_inference_steps",
    "num_threads",
)
EVALUATION_FIELDS = ("seeds", "sampler", "batch_size", "include_base", "gate", "clip_model", "dino_model")
GENERATION_FIELDS = ("sampler", "seed", "batch_size", "max_images", "fuse", "output_dir")


class FlowParams(BaseModel):
    """Base of the flow parameter groups: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def _library_fields(self, source: type[BaseModel]) -> dict[str, Any]:
        """This group's values of ``source``'s fields, as they are (nested configs stay models)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in source.model_fields}


class TrainingParams(derive_model(TrainConfig, TRAINING_FIELDS, base=FlowParams)):
    """How to fine-tune the LoRA adapter. Empty fields take the base model's recommendation."""

    # How the training runs (``brandtune.training.launch`` and the Prefect task), not what it trains.
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

    def train_config(self, brand: str, dataset: str | None) -> TrainConfig:
        """The full :class:`~brandtune.config.TrainConfig`; empty fields stay empty (the base's recommendation).

        It resumes nothing by itself: the training task sets the invocation (this flow run), so that only a
        retry of this flow run continues its checkpoints.
        """
        fields = {k: v for k, v in self._library_fields(TrainConfig).items() if v is not None}
        return TrainConfig(brand=brand, dataset=dataset, **fields)


class EvaluationParams(derive_model(EvalConfig, EVALUATION_FIELDS, base=FlowParams)):
    """How to evaluate: brand.yaml's fixed evaluation prompts x these seeds, one sampler for every model."""

    def eval_config(self, brand: str, candidate: str, against: str | None, promote: bool) -> EvalConfig:
        """The full :class:`~brandtune.config.EvalConfig`."""
        return EvalConfig(
            brand=brand,
            candidate=candidate,
            against=against,
            promote=promote,
            **self._library_fields(EvalConfig),
        )


class GenerationParams(derive_model(GenerateConfig, GENERATION_FIELDS, base=FlowParams)):
    """Sampler settings for a campaign."""

    def generate_config(
        self, brand: str, prompt: str, settings: list[str], variations: int, model: str
    ) -> GenerateConfig:
        """The full :class:`~brandtune.config.GenerateConfig`."""
        return GenerateConfig(
            brand=brand,
            prompt=prompt,
            settings=settings,
            variations=variations,
            model=model,
            **self._library_fields(GenerateConfig),
        )
