"""Everything a training run resolves before it computes anything, and the checks that fail fast."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.config import BrandSpec, TrainConfig
from brandtune.config.train import BASE_RECOMMENDED
from brandtune.errors import TrainingError
from brandtune.provenance import config_hash
from brandtune.training.buckets import all_square
from brandtune.training.data import Encoded, Example
from brandtune.training.families import FamilyOps, family_ops

if TYPE_CHECKING:
    import torch

    from brandtune.models import BaseComponents, ResolvedBase
    from brandtune.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """What a training is, resolved without loading any weights: the identity both the launching process (to
    decide whether to train at all, and where) and the training process (to train) compute the same way.

    Attributes:
        config: The config with the base's recommendation filled in (:meth:`TrainConfig.with_base_defaults`).
        brand: The brand spec.
        resolved: The base model (with its revision).
        dataset_dir: The dataset folder; its name is the fingerprint.
        resolution: Training size in px.
        run_hash: Hash of dataset fingerprint + resolved config + base and revision + resolution.
    """

    config: TrainConfig
    brand: BrandSpec
    resolved: ResolvedBase
    dataset_dir: Path
    resolution: int
    run_hash: str

    @property
    def fingerprint(self) -> str:
        return self.dataset_dir.name


def resolve_job(config: TrainConfig, settings: Settings) -> TrainJob:
    """Resolve brand, dataset, base (revision and recommendation) and the run's identity; check the resolution.

    Cheap: reads brand.yaml, the dataset manifest and the base's config files, no model weights (a hub id not yet
    in the local cache is downloaded by :func:`~brandtune.models.resolve_base`).

    Raises:
        ConfigError, IngestError, ModelResolutionError, TrainingError: bad input, named before any compute.
    """
    from brandtune.config import load_brand
    from brandtune.ingest import find_dataset
    from brandtune.ingest.layout import dataset_images
    from brandtune.models import resolve_base

    brand = load_brand(config.brand)
    dataset_dir = find_dataset(brand.name, config.dataset, settings)
    resolved = resolve_base(config.base_model or brand.base_model, settings=settings)
    resolution = config.resolution or dataset_resolution(dataset_dir)
    filled = config.with_base_defaults(resolved.training_defaults)
    family_ops(resolved.family).check(filled, resolved, resolution)
    taken = [f"{name}={getattr(filled, name)}" for name in BASE_RECOMMENDED if getattr(config, name) is None]
    if taken:
        logger.info("from %s's recommendation (%s): %s", resolved.name, resolved.training_defaults.source,
                    ", ".join(taken))  # fmt: skip
    images = dataset_images(dataset_dir)
    traits = {"masks": any(img.mask for img in images), "square": all_square([img.file for img in images])}
    run_hash = run_identity(filled, dataset_dir.name, resolved, resolution, **traits)
    return TrainJob(filled, brand, resolved, dataset_dir, resolution, run_hash)


@dataclass
class TrainPlan:
    """A training being run: its resolved job, where it writes, and the state the loop builds up."""

    config: TrainConfig  # resolved: every base-dependent field is set
    brand: BrandSpec
    resolved: ResolvedBase
    dataset_dir: Path
    fingerprint: str
    examples: list[Example]
    resolution: int
    run_dir: Path
    run_hash: str
    rank: int = 0
    world: int = 1
    components: BaseComponents | None = None
    encoded: list[Encoded] | None = None  # one per aspect bucket
    class_encoded: list[Encoded] | None = None
    # the empty caption's conditioning (one row, the keys of the instance conditioning), with caption_dropout
    empty_conditioning: dict[str, torch.Tensor] | None = None
    weight_dtype: torch.dtype | None = None
    mlflow_run_id: str | None = None
    # the frozen VAE, text encoders and tokenizers kept for the validation pipeline, by pipeline component name
    # (:meth:`release_encoders`); empty: validation loads what it needs from the base folder
    validation_parts: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_bf16: bool = False  # the training step runs under CPU bf16 autocast (loop.cpu_bf16_step)

    @classmethod
    def from_job(cls, job: TrainJob, examples: list[Example], run_dir: Path) -> TrainPlan:
        return cls(
            job.config,
            job.brand,
            job.resolved,
            job.dataset_dir,
            job.fingerprint,
            examples,
            job.resolution,
            run_dir,
            job.run_hash,
        )

    @property
    def family(self) -> str:
        return self.resolved.family

    @functools.cached_property
    def ops(self) -> FamilyOps:
        """The family's training pieces (conditioning, objective, denoiser call)."""
        return family_ops(self.resolved.family)

    @property
    def noise_scheduler(self) -> Any:
        assert self.components is not None
        return self.components.noise_scheduler

    def release_encoders(self, trained_encoders: tuple[Any, ...]) -> None:
        """Take the VAE and the frozen text encoders out of the training components once the data is encoded.

        On the UNet families (small VAE and CLIP encoders) they are kept, in the training weight dtype and on the
        CPU, for the validation images: the validation pipeline is then built from the models in memory instead
        of loading the base a second time. The flow families' text encoders (FLUX's and SD3's T5 alone is ~9 GB
        in bf16) are let go; their validation loads them again.
        """
        assert self.components is not None
        components = self.components
        info = components.info
        if not info.flow_matching:
            parts: dict[str, Any] = {"vae": components.vae}
            encoders = zip(info.text_encoders, components.text_encoders, components.tokenizers, strict=True)
            for spec, enc, tokenizer in encoders:
                parts[spec.tokenizer_folder] = tokenizer
                if not any(
                    enc is trained for trained in trained_encoders
                ):  # trained ones stay where they are
                    parts[spec.folder] = enc
            for name, model in parts.items():
                if not name.startswith("tokenizer"):
                    model.to("cpu", dtype=self.weight_dtype)  # the pipeline moves it next to the denoiser
            self.validation_parts = parts
        self.components = dataclasses.replace(components, vae=None, text_encoders=trained_encoders)

    @property
    def validation_prompts(self) -> list[str]:
        prompts = self.config.validation_prompts or self.brand.evaluation_prompts
        return [self.brand.fill(p) for p in prompts]

    def provenance(self) -> dict[str, Any]:
        from brandtune.provenance import brandtune_version, git_sha

        cfg = self.config
        info = {
            "brand": self.brand.name,
            "trigger": self.brand.trigger,
            "subject": self.brand.subject,
            **self.resolved.provenance(),
            "pipeline_class": self.resolved.pipeline_class,
            "rank": cfg.rank,
            "alpha": cfg.lora_alpha,
            "target_modules": cfg.target_modules,
            "text_encoder_trained": cfg.train_text_encoder,
            "resolution": self.resolution,
            "dataset_fingerprint": self.fingerprint,
            "config_hash": self.run_hash,
            "steps": cfg.max_train_steps,
            "seed": cfg.seed,
            "ema_decay": cfg.ema_decay,  # None: the adapter is the last step's weights
            "brandtune_version": brandtune_version(),
            "git_sha": git_sha(),
            "mlflow_run_id": self.mlflow_run_id or "",
        }
        if self.resolved.family in {"flux", "sd3"} and self.components is not None:
            # the T5 length the adapter was trained with: generation samples with the same (sampling.call_kwargs)
            info["max_sequence_length"] = self.ops.sequence_length(self.components, cfg)
        return info


def dataset_resolution(dataset_dir: Path) -> int:
    return int(json.loads((dataset_dir / "manifest.json").read_text())["resolution"])


def run_identity(
    config: TrainConfig,
    fingerprint: str,
    resolved: ResolvedBase,
    resolution: int,
    *,
    masks: bool = False,
    square: bool = True,
) -> str:
    """The hash that names a training: dataset fingerprint + resolved config + base and revision + resolution.

    The masked-loss fields count only where they change the training (``masks``: the dataset has product masks;
    ``background_weight`` and ``background_target`` only with ``masked_loss``), so a dataset without masks keeps the identity it had before
    they existed. Likewise the bucket fields count only for a dataset with non-square images (``square`` False).
    """
    ident = config.identity()
    if not (masks and config.masked_loss):
        ident.pop("background_weight", None)
        ident.pop("background_target", None)
    if not masks:
        ident.pop("masked_loss", None)
    if square:
        ident.pop("aspect_buckets", None)
        ident.pop("bucket_max_aspect", None)
    ident.update(
        dataset=fingerprint, base_model=resolved.name, base_revision=resolved.revision, resolution=resolution
    )
    return config_hash(ident)


def check_precision(mixed_precision: str) -> None:
    import torch

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TrainingError("mixed_precision 'fp16' needs a CUDA GPU; use 'no' (or 'bf16') on the CPU")
    if mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise TrainingError("mixed_precision 'bf16' is not supported by this GPU; use 'fp16' or 'no'")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux; empty elsewhere or when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU does bf16 matrix maths natively: the CPU says AMX-BF16 (``amx_bf16`` in its flags) and
    torch can use it (AMX tiles enabled by the OS, AVX-512 BF16). Detected, never assumed: an AMD EPYC without
    AMX, or a torch without these checks, is False."""
    import torch

    try:
        usable = torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # a torch without the checks
        return False
    return bool(usable) and "amx_bf16" in _cpu_flags()


def check_disk(run_dir: Path, lora_params: int, config: TrainConfig) -> None:
    """Fail before training when the run folder's disk cannot hold the checkpoints it will write."""
    per_ckpt = lora_params * 4 * 3  # weights + two AdamW moments, fp32
    need = per_ckpt * (config.checkpoints_total_limit + 1) + lora_params * 4 * 2 + (64 << 20)
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise TrainingError(
            f"not enough disk for checkpoints under {run_dir}: need about {need / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free; free space, lower checkpoints_total_limit or pick another output_dir"
        )
