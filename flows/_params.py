"""Typed flow parameters: what the Prefect UI turns into a form (descriptions, bounds, dropdowns).

Each model takes its knobs from a library config (:func:`~brandtune.config.derive_model`): a field's type, bounds,
default and description are the library's, written once there. What only a flow has (how many processes, retries,
a timeout) is declared here, once. ``tests/config/test_flow_params.py`` checks that the two never drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

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
    "compile",
    "cpu_bf16",
    "seed",
    "checkpointing_steps",
    "validation_inference_steps",
    "num_threads",
)
EVALUATION_FIELDS = (
    "seeds", "sampler", "batch_size", "device", "dtype", "include_base", "gate", "clip_model", "dino_model",
)  # fmt: skip
GENERATION_FIELDS = ("sampler", "seed", "batch_size", "device", "dtype", "max_images", "fuse", "output_dir")


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
        description="Retry a training that failed for a transient reason (its process killed, a server "
        "unreachable) this many times; a retry (same flow run) resumes from its own last checkpoint. A bad config or "
        "a NaN loss is never retried.",
    )
    retry_delay_seconds: float = Field(
        default=10, ge=0, le=3600, description="Seconds to wait before a retry of the training."
    )
    timeout_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Stop training (and its whole process tree) after this many minutes, GPU-slot wait included. "
        "Empty: BRANDTUNE_TIMEOUT_TRAIN_S + BRANDTUNE_GPU_WAIT_S (30 hours unless set).",
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


HOUR = 3600.0


class Timeouts(BaseModel):
    """How long each stage may run before Prefect stops it, in seconds: generous defaults, each settable through
    the environment of the worker (or of the process that runs the flow), e.g. ``BRANDTUNE_TIMEOUT_TRAIN_S``.

    A flow's own limit is the sum of what its tasks may take plus an hour. Prefect reads a flow's and a task's
    limit when ``flows/`` is imported, which a process worker does anew for every flow run, so a changed variable
    applies to the next run; the GPU-slot wait is read when the training task starts. The ``train`` flow's
    ``training.timeout_minutes`` parameter overrides ``train`` for one run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingest: float = Field(
        default=2 * HOUR, gt=0, description="ingest-photos task. Env: BRANDTUNE_TIMEOUT_INGEST_S."
    )
    train: float = Field(
        default=24 * HOUR,
        gt=0,
        description="train-lora task: the training after its GPU slot is free. Env: BRANDTUNE_TIMEOUT_TRAIN_S.",
    )
    gpu_wait: float = Field(
        default=6 * HOUR,
        gt=0,
        description="Longest wait for a slot of the brandtune-gpu concurrency limit before the training task "
        "gives up. Env: BRANDTUNE_GPU_WAIT_S.",
    )
    evaluate: float = Field(
        default=6 * HOUR, gt=0, description="evaluate-candidate task. Env: BRANDTUNE_TIMEOUT_EVALUATE_S."
    )
    generate: float = Field(
        default=12 * HOUR, gt=0, description="generate-campaign task. Env: BRANDTUNE_TIMEOUT_GENERATE_S."
    )
    approval: float = Field(
        default=72 * HOUR,
        gt=0,
        description="Longest wait of a retrain for a person to approve its promotion (brand.yaml automation: "
        "require_approval); then the candidate stays unpromoted. Env: BRANDTUNE_TIMEOUT_APPROVAL_S.",
    )
    mlflow: float = Field(
        default=0.5 * HOUR,
        gt=0,
        description="Each MLflow task (check-unchanged, register-candidate, record-lineage), retries included. "
        "Env: BRANDTUNE_TIMEOUT_MLFLOW_S.",
    )

    ENV: ClassVar[dict[str, str]] = {
        "ingest": "BRANDTUNE_TIMEOUT_INGEST_S",
        "train": "BRANDTUNE_TIMEOUT_TRAIN_S",
        "gpu_wait": "BRANDTUNE_GPU_WAIT_S",
        "evaluate": "BRANDTUNE_TIMEOUT_EVALUATE_S",
        "generate": "BRANDTUNE_TIMEOUT_GENERATE_S",
        "approval": "BRANDTUNE_TIMEOUT_APPROVAL_S",
        "mlflow": "BRANDTUNE_TIMEOUT_MLFLOW_S",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timeouts:
        """The defaults, overridden by the variables that are set.

        Raises:
            ConfigError: a variable is not a positive number of seconds.
        """
        from pydantic import ValidationError

        from brandtune.errors import ConfigError

        env = os.environ if environ is None else environ
        values = {field: env[var] for field, var in cls.ENV.items() if env.get(var)}
        try:
            return cls(**values)
        except ValidationError as exc:
            bad = ", ".join(
                f"{cls.ENV[str(e['loc'][0])]}={env[cls.ENV[str(e['loc'][0])]]!r}" for e in exc.errors()
            )
            raise ConfigError(
                f"{bad}: a time-out must be a positive number of seconds; fix or unset it"
            ) from None

    def flow(self, name: Literal["ingest", "train", "evaluate", "generate", "retrain"]) -> float:
        """The whole flow's limit: its tasks' limits added up, plus an hour for the rest."""
        train = self.gpu_wait + self.train + 3 * self.mlflow
        work = {
            "ingest": self.ingest,
            "train": train,
            "evaluate": self.evaluate + self.mlflow,
            "generate": self.generate + self.mlflow,
            "retrain": self.ingest + train + self.evaluate + self.approval + 2 * self.mlflow,
        }[name]
        return work + HOUR


TIMEOUTS = Timeouts.from_env()
"""The limits this process's flows and tasks were declared with (read once, when ``flows`` is imported)."""
