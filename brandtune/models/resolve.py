"""Turn a base-model reference into a local diffusers folder with a family and a revision.

Accepted references:

- ``builtin:<name>``: a built-in tiny model (``brandtune.models.BUILTIN_MODELS``), built on first use;
- a path to a local diffusers folder (one with ``model_index.json``);
- a Hugging Face hub id ``org/name`` or ``org/name@revision``, downloaded with ``huggingface_hub`` (safetensors
  weights, configs and tokenizer files only; never pickles). ``HF_HUB_OFFLINE=1`` restricts this to the local
  hub cache and makes no network call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from brandtune.config import TrainingDefaults
from brandtune.config.train import ATTENTION_TRANSFORMER_TARGETS
from brandtune.errors import ModelResolutionError
from brandtune.models.builtin import BUILTIN_PREFIX, builtin_refs, builtin_revision, ensure_builtin
from brandtune.models.family import FAMILY_INFO, PIPELINE_CLASS, Family, detect_family, read_json
from brandtune.models.revision import cached_revision
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
# What a training base needs from a hub repo: configs, tokenizer files and safetensors weights of the full-precision
# components. Variants, pickles, single-file checkpoints and the safety checker (never used) are left out.
# T5 tokenizers (FLUX, SD3) also keep a sentencepiece ``spiece.model`` (protobuf, not a pickle).
HUB_ALLOW_PATTERNS: tuple[str, ...] = (
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/*.model",
    "*/*.safetensors",
)
HUB_IGNORE_PATTERNS: tuple[str, ...] = (
    "*.fp16.*",
    "*.bf16.*",
    "*.non_ema.*",
    "safety_checker/*",
    "*.bin",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.msgpack",
    "*.h5",
    "*.onnx",
)
_WEIGHT_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
#: A base's recommendation for LoRA fine-tunes on it, shipped in its folder (see :class:`TrainingDefaults`).
TRAINING_DEFAULTS_FILE = "brandtune_training.json"
_VALID_FOLDER = (
    "a diffusers folder holds model_index.json plus unet/ (transformer/ for FLUX and SD3), vae/, text_encoder/ "
    "(and text_encoder_2/ for SDXL and FLUX, text_encoder_3/ for SD3) with config.json and *.safetensors weights, "
    "the matching tokenizer folders and scheduler/"
)

#: What a UNet base (SD 1.x/2.x, SDXL) without its own ``brandtune_training.json`` recommends.
GENERIC_TRAINING_DEFAULTS = TrainingDefaults()
#: What a FLUX or SD3 base without one recommends: LoRA on the joint attention (both streams), the learning rate
#: and batch of diffusers' FLUX/SD3 DreamBooth LoRA scripts (1e-4, one image per step; a 12B transformer).
FLOW_TRAINING_DEFAULTS = TrainingDefaults(
    target_modules=ATTENTION_TRANSFORMER_TARGETS,
    learning_rate=1e-4,
    train_batch_size=1,
    source="brandtune's generic defaults for flow-matching transformers",
)


def generic_training_defaults(family: Family) -> TrainingDefaults:
    """The recommendation of a base of ``family`` that ships none."""
    return FLOW_TRAINING_DEFAULTS if FAMILY_INFO[family].flow_matching else GENERIC_TRAINING_DEFAULTS


def read_training_defaults(folder: Path, family: Family = "sd1") -> TrainingDefaults:
    """The recommendation a base folder ships in ``brandtune_training.json``, else the family's generic one.

    Fields the file leaves out take the family's generic values.

    Raises:
        ModelResolutionError: the file exists but is not valid JSON or holds an unknown key or a bad value.
    """
    path = folder / TRAINING_DEFAULTS_FILE
    generic = generic_training_defaults(family)
    if not path.is_file():
        return generic
    data = read_json(path)  # names the file when it is not a JSON object
    shipped = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys are notes
    try:
        base = generic.model_dump(exclude={"source"})
        return TrainingDefaults.model_validate({**base, "source": str(path), **shipped})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ModelResolutionError(
            f"{path}: not a valid training recommendation ({where}: {first['msg']}); fix the file (keys: "
            f"{', '.join(k for k in TrainingDefaults.model_fields if k != 'source')}) or delete it"
        ) from exc


@dataclass(frozen=True)
class ResolvedBase:
    """A base model ready to load: where it is, what it is and which exact version.

    Attributes:
        ref: The reference as the user gave it.
        name: A portable name: ``"builtin:tiny"``, the hub id, or a local folder's name.
        path: The local diffusers folder.
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"flux"`` or ``"sd3"``.
        revision: ``"sha256:<hex>"`` content hash for builtin and local folders, the commit sha for hub ids.
        resolution: Native image size in pixels (the denoiser's sample size x VAE scale factor).
        pipeline_class: The diffusers text-to-image pipeline class name for this family.
        training_defaults: What the base recommends for a LoRA fine-tune (targets, learning rate, schedule,
            steps, batch); TrainConfig fields left empty take these.
    """

    ref: str
    name: str
    path: Path
    family: Family
    revision: str
    resolution: int
    pipeline_class: str
    training_defaults: TrainingDefaults = GENERIC_TRAINING_DEFAULTS

    def provenance(self) -> dict[str, str]:
        """The fields an artifact records about its base model (tags, ``brandtune.json``)."""
        return {"base_model": self.name, "base_revision": self.revision, "base_family": self.family}


def resolve_base(ref: str, *, settings: Settings | None = None) -> ResolvedBase:
    """Resolve a base-model reference to a local, checked diffusers folder.

    Args:
        ref: ``builtin:<name>``, a local folder path, or a hub id ``org/name[@revision]``.
        settings: Where brandtune keeps its state; read from the environment when omitted.

    Returns:
        The resolved base.

    Raises:
        ModelResolutionError: The reference names nothing usable (the message says what would be).
        UnsupportedModelError: The model resolved but is not of a supported family (SD 1.x/2.x, SDXL, FLUX.1,
            SD3/3.5).
    """
    settings = settings or Settings.from_env()
    text = ref.strip()
    if text.startswith(BUILTIN_PREFIX):
        folder = ensure_builtin(text, settings)
        name = text
        if folder.is_relative_to(settings.models_dir):
            revision = builtin_revision(folder)
        else:  # a prebuilt copy shipped in the package, maybe read-only: cache like any local folder
            revision = _local_revision(folder, settings)
    elif text and Path(text).expanduser().exists():
        folder = _check_local_folder(ref, Path(text).expanduser().resolve())
        name = folder.name
        revision = _local_revision(folder, settings)
    elif (match := _HUB_ID.fullmatch(text)) and not text.startswith((".", "/", "~")):
        folder, revision = _hub_snapshot(ref, match["repo"], match["revision"])
        name = match["repo"]
    else:
        raise ModelResolutionError(
            f"Cannot resolve base model {ref!r}: it is not a built-in model, an existing folder or a hub id "
            f"(org/name[@revision]). Built-in models: {builtin_refs()}. A local base must be a "
            f"folder path; {_VALID_FOLDER}."
        )
    family = detect_family(folder)
    _check_safetensors(ref, folder)
    resolved = ResolvedBase(
        ref=ref,
        name=name,
        path=folder,
        family=family,
        revision=revision,
        resolution=native_resolution(folder, family),
        pipeline_class=PIPELINE_CLASS[family],
        training_defaults=read_training_defaults(folder, family),
    )
    logger.debug("resolved %r to %s", ref, resolved)
    return resolved


def native_resolution(folder: Path, family: Family = "sd1") -> int:
    """The image size a diffusers folder generates by default: the denoiser's sample size x VAE scale factor.

    A FLUX transformer has no sample size in its config; its pipeline defaults to 128 latent rows (1024 px on
    FLUX.1's 8x VAE), and so does this.
    """
    denoiser = FAMILY_INFO[family].denoiser
    config = read_json(folder / denoiser / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    sample_size: Any = config.get("sample_size", 128 if family == "flux" else 64)
    if isinstance(sample_size, list | tuple):
        sample_size = sample_size[0]
    return int(sample_size) * vae_scale_factor(vae)


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    """How many pixels one latent cell spans: 2 per VAE down block after the first."""
    return 2 ** (len(vae_config.get("block_out_channels", [0, 0, 0, 0])) - 1)


def _local_revision(folder: Path, settings: Settings) -> str:
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    return cached_revision(folder, settings.cache_dir / "base_revisions" / f"{key}.json")


def _check_local_folder(ref: str, folder: Path) -> Path:
    if not folder.is_dir():
        raise ModelResolutionError(
            f"Base model {ref!r} is a file, not a folder; {_VALID_FOLDER}. Single-file checkpoints "
            "(.safetensors/.ckpt) are not supported: convert them to a diffusers folder first."
        )
    if not (folder / "model_index.json").is_file():
        raise ModelResolutionError(
            f"Base model folder {str(folder)!r} has no model_index.json, so it is not a diffusers pipeline "
            f"folder; {_VALID_FOLDER}. Point at the folder that contains model_index.json."
        )
    return folder


def _check_safetensors(ref: str, folder: Path) -> None:
    """Refuse folders whose weights are pickles only: brandtune never unpickles model files."""
    for component in _WEIGHT_COMPONENTS:
        sub = folder / component
        if sub.is_dir() and not any(sub.glob("*.safetensors")):
            raise ModelResolutionError(
                f"Base model {ref!r} has no *.safetensors weights in {component}/ (pickled .bin/.ckpt files are "
                "never loaded). Convert the weights to safetensors, e.g. load the pipeline once in a trusted "
                "environment and save_pretrained(..., safe_serialization=True)."
            )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_snapshot(ref: str, repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Download (or find in the local hub cache) the files of a hub repo that a base model needs.

    Returns:
        The snapshot folder and its commit sha.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )

    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(HUB_ALLOW_PATTERNS),
                ignore_patterns=list(HUB_IGNORE_PATTERNS),
                local_files_only=offline,
            )
        )
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, OSError) as exc:
        where = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if offline
            else "the Hugging Face hub could not be reached or refused the request"
        )
        raise ModelResolutionError(
            f"Cannot resolve base model {ref!r}: {where} ({type(exc).__name__}: {exc}). Use a local diffusers "
            f"folder instead (a path containing model_index.json), copy one made elsewhere with "
            f"`brandtune base export {ref} DIR`, or allow network access (unset HF_HUB_OFFLINE, check "
            f"HF_ENDPOINT/proxy settings). Built-in models need no network: {builtin_refs()}."
        ) from exc
    if not (folder / "model_index.json").is_file():
        raise ModelResolutionError(
            f"Hub repo {repo_id!r} has no model_index.json: it is not a diffusers pipeline repo; {_VALID_FOLDER}."
        )
    # snapshot_download returns <cache>/models--org--name/snapshots/<commit>
    return folder, folder.name
