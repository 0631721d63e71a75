"""The built-in tiny base models, built from config on first use.

Each reproduces the architecture of a real family at 64 px, small enough to train and sample on a laptop CPU in
seconds; they exist so that the whole pipeline, and the code paths of real models, run without a download:

- ``builtin:tiny``: SD 1.x (``StableDiffusionPipeline``: UNet, one CLIP text encoder);
- ``builtin:tiny-sdxl``: SDXL (``StableDiffusionXLPipeline``: two CLIP encoders, ``text_time`` conditioning);
- ``builtin:tiny-flux``: FLUX.1-dev (``FluxPipeline``: ``FluxTransformer2DModel`` with guidance embedding, CLIP-L
  in ``text_encoder``/``tokenizer`` and T5 in ``text_encoder_2``/``tokenizer_2``, flow-matching scheduler with
  resolution-dependent shift);
- ``builtin:tiny-flux-schnell``: FLUX.1-schnell (the same without guidance embedding, static shift 1);
- ``builtin:tiny-sd3``: SD3/3.5 (``StableDiffusion3Pipeline``: ``SD3Transformer2DModel``, CLIP-L and CLIP-G
  ``CLIPTextModelWithProjection`` in ``text_encoder``/``text_encoder_2``, T5 in ``text_encoder_3``/``tokenizer_3``).

The FLUX.1 and SD3 models use a 4-channel VAE with their family's ``shift_factor``/``scaling_factor`` (the real
ones have 16 channels) and a tiny T5 encoder whose tokenizer (:func:`~brandtune.models.tokenizer.write_t5_tokenizer_files`)
has ``model_max_length`` :data:`~brandtune.models.tokenizer.T5_MAX_LENGTH`: pass it as ``max_sequence_length``.

``builtin:tiny`` ships pretrained: its weights are in ``brandtune/assets/builtin_tiny/`` (pretrained by
:mod:`brandtune.models.pretrain` on synthetic product photos, see docs/builtin-tiny.md). The others ship no weights
and are built here with seeded random weights (every build on the same torch version writes the same bytes).

A build lands in ``<BRANDTUNE_HOME>/models/builtin/<name>-<spec_hash>``: it is written to a temporary folder
beside that one, gets a ``.complete`` marker last and is moved into place with ``os.replace``; when two processes
race, the loser drops its copy and uses the winner's. If the package ships a prebuilt diffusers folder for a
model (``brandtune/assets/<asset>/`` with a ``model_index.json``), that folder is used as is and nothing is built.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from brandtune.errors import ModelResolutionError
from brandtune.models.family import Family
from brandtune.models.revision import REVISION_FILE, cached_revision
from brandtune.models.tokenizer import (
    MODEL_MAX_LENGTH,
    T5_MAX_LENGTH,
    corpus_digest,
    t5_digest,
    write_clip_tokenizer_files,
    write_t5_tokenizer_files,
)
from brandtune.provenance import config_hash
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
COMPLETE_MARKER = ".complete"
# Bump when a change to the build code (not visible in the configs below) changes what gets written.
_BUILD_VERSION = 1
_SEED = 0

_TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 64,  # 2 blocks -> scale factor 2: 64 px images <-> 4x32x32 latents
}
_TINY_CLIP: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",  # OpenAI CLIP (SD 1.x); SD 2.x / SDXL's second encoder are OpenCLIP, "gelu"
}
# builtin:tiny is pretrained by brandtune.models.pretrain, so its parts are sized for a 2-core CPU to learn in under
# an hour: a VAE with a 4x downsampling and 48 latent channels (as many numbers as a 4x4 patch of RGB, so it can be
# nearly lossless and trains in minutes), a UNet of ~4M parameters on the 16x16 latent grid and a 2-layer text
# encoder. On a CPU the cost of these small convolutions is per-op overhead more than FLOPs: a 16x16 grid is what
# makes thousands of UNet steps fit in the budget.
_TINY_LATENT_CHANNELS = 48
_TINY_PIXEL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "latent_channels": _TINY_LATENT_CHANNELS,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
    "sample_size": 64,  # 64 px images <-> 48x16x16 latents
}
_TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "layer_norm_eps": 1e-5,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
}
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
# The cosine schedule suits small, nearly pixel-space latents better than SD's scaled_linear; DDIM samples well in
# 20-50 steps. Training code builds its DDPMScheduler from this same config.
_TINY_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    # v-prediction: at high noise the target is (minus) the clean latent, so a briefly trained model does not blow
    # up in DDIM's first steps as an epsilon model does (x0 = (x_t - sigma * eps) / alpha, alpha ~ 0.06 at t=961).
    "prediction_type": "v_prediction",
}
# The flow-matching families. Their VAE: _TINY_VAE's shape without the quant convs (as FLUX.1's and SD3's VAEs),
# with each family's latent normalization, ``(latent - shift_factor) * scaling_factor``.
_TINY_FLOW_VAE: dict[str, Any] = {**_TINY_VAE, "use_quant_conv": False, "use_post_quant_conv": False}
# T5 v1.1 (FLUX.1's and SD3's T5-XXL encoder) in miniature: gated-GELU feed-forward, and tie_word_embeddings=False,
# which transformers 5 reads as v1.1's "no decoder output scaling" (it stores True: T5 always ties the embeddings).
_TINY_T5: dict[str, Any] = {
    "d_model": 32,
    "d_ff": 37,
    "d_kv": 8,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}
_T5_TOKENIZER: dict[str, Any] = {"model_max_length": T5_MAX_LENGTH}
# The folder each flow family keeps its T5 tokenizer in (its other tokenizer folders hold CLIP ones).
_T5_TOKENIZER_FOLDER: dict[Family, str] = {"flux": "tokenizer_2", "sd3": "tokenizer_3"}
_FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    # The pipeline packs 2x2 latent patches into one token: 4 x the VAE's latent channels.
    "in_channels": 4 * _TINY_FLOW_VAE["latent_channels"],
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _TINY_T5["d_model"],  # T5's hidden states are the text tokens
    "pooled_projection_dim": _TINY_CLIP["hidden_size"],  # CLIP-L's pooled output
    "axes_dims_rope": [4, 4, 8],  # sums to attention_head_dim
}


def _flux_config(guidance_embeds: bool, scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The components of a tiny FLUX.1 model: dev (``guidance_embeds=True``) or schnell."""
    return {
        "transformer": {**_FLUX_TRANSFORMER, "guidance_embeds": guidance_embeds},
        "vae": {**_TINY_FLOW_VAE, "shift_factor": 0.1159, "scaling_factor": 0.3611},
        "text_encoder": _TINY_CLIP,
        "text_encoder_2": _TINY_T5,
        "tokenizer_2": _T5_TOKENIZER,
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            **scheduler,
        },
    }


# SD3 pads the concatenated CLIP-L + CLIP-G hidden states to T5's width, so together they must not exceed it.
_SD3_CLIP: dict[str, Any] = {
    **_TINY_CLIP,
    "hidden_size": _TINY_T5["d_model"] // 2,
    "projection_dim": _TINY_T5["d_model"] // 2,
}


@dataclass(frozen=True)
class BuiltinSpec:
    """How one built-in model is made.

    Attributes:
        name: The ref users write, e.g. ``"builtin:tiny"``.
        description: One line for listings and error messages.
        family: The architecture family it reproduces.
        config: Constructor arguments of every component; hashed into the build folder's name.
        asset: Folder name under ``brandtune/assets/`` that would hold a shipped prebuilt copy.
    """

    name: str
    description: str
    family: Family
    config: Mapping[str, Any]
    asset: str


_SPECS: dict[str, BuiltinSpec] = {
    spec.name: spec
    for spec in (
        BuiltinSpec(
            name="builtin:tiny",
            description="SD-1.x architecture, 64 px, ~5M parameters pretrained on procedural product scenes",
            family="sd1",
            asset="builtin_tiny",
            config={
                "unet": {
                    "sample_size": 16,
                    "in_channels": _TINY_LATENT_CHANNELS,
                    "out_channels": _TINY_LATENT_CHANNELS,
                    "layers_per_block": 1,
                    "block_out_channels": [64, 96, 96],
                    # Cross-attention at 8x8 and 4x4 (to_q/to_k/to_v/to_out.0: LoRA's default targets).
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    "cross_attention_dim": 64,
                    # Also pool the text (attention pooling) into the time embedding, so every resnet sees the
                    # caption: global attributes (colours, setting) are learned in hundreds of steps, where
                    # cross-attention alone had not started to follow the text after 500. The pipeline is
                    # unchanged: the UNet computes the pooled embedding from encoder_hidden_states itself.
                    "addition_embed_type": "text",
                    "addition_embed_type_num_heads": 4,
                },
                "vae": _TINY_PIXEL_VAE,
                "text_encoder": _TINY_TEXT,
                "scheduler": _TINY_SCHEDULER,
            },
        ),
        BuiltinSpec(
            name="builtin:tiny-sdxl",
            description="SDXL architecture (two text encoders, text_time conditioning), 64 px, random weights",
            family="sdxl",
            asset="builtin_tiny_sdxl",
            config={
                "unet": {
                    "sample_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "layers_per_block": 2,
                    "block_out_channels": [32, 64],
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                    "attention_head_dim": [2, 4],
                    "use_linear_projection": True,
                    "transformer_layers_per_block": [1, 2],
                    "addition_embed_type": "text_time",
                    "addition_time_embed_dim": 8,
                    # 6 micro-conditioning ids x addition_time_embed_dim + text_encoder_2's projection_dim
                    "projection_class_embeddings_input_dim": 6 * 8 + 32,
                    # the two encoders' hidden states are concatenated: 32 + 32
                    "cross_attention_dim": 64,
                },
                "vae": _TINY_VAE,
                "text_encoder": _TINY_CLIP,
                "text_encoder_2": {**_TINY_CLIP, "hidden_act": "gelu"},
                "scheduler": {
                    "_class_name": "EulerDiscreteScheduler",
                    **_SD_BETAS,
                    "timestep_spacing": "leading",
                },
            },
        ),
        BuiltinSpec(
            name="builtin:tiny-flux",
            description="FLUX.1-dev architecture (MMDiT, CLIP-L + T5, guidance embedding), 64 px, random weights",
            family="flux",
            asset="builtin_tiny_flux",
            # FLUX.1-dev's scheduler: the shift grows with the image's token count, 0.5 at 256 to 1.15 at 4096.
            config=_flux_config(
                guidance_embeds=True,
                scheduler={
                    "shift": 3.0,
                    "use_dynamic_shifting": True,
                    "base_shift": 0.5,
                    "max_shift": 1.15,
                    "base_image_seq_len": 256,
                    "max_image_seq_len": 4096,
                },
            ),
        ),
        BuiltinSpec(
            name="builtin:tiny-flux-schnell",
            description="FLUX.1-schnell architecture (as tiny-flux, no guidance embedding), 64 px, random weights",
            family="flux",
            asset="builtin_tiny_flux_schnell",
            config=_flux_config(
                guidance_embeds=False, scheduler={"shift": 1.0, "use_dynamic_shifting": False}
            ),
        ),
        BuiltinSpec(
            name="builtin:tiny-sd3",
            description="SD3/3.5 architecture (MMDiT, CLIP-L + CLIP-G + T5), 64 px, random weights",
            family="sd3",
            asset="builtin_tiny_sd3",
            config={
                "transformer": {
                    "sample_size": 32,  # the latent grid: 64 px / the VAE's factor 2
                    "patch_size": 2,
                    "in_channels": _TINY_FLOW_VAE["latent_channels"],
                    "out_channels": _TINY_FLOW_VAE["latent_channels"],
                    "num_layers": 2,
                    "attention_head_dim": 8,
                    "num_attention_heads": 4,
                    "caption_projection_dim": 32,  # = attention_head_dim x num_attention_heads, as in SD3
                    "joint_attention_dim": _TINY_T5["d_model"],
                    # the pooled text is CLIP-L's and CLIP-G's text_embeds side by side
                    "pooled_projection_dim": 2 * _SD3_CLIP["projection_dim"],
                    "pos_embed_max_size": 96,
                },
                "vae": {**_TINY_FLOW_VAE, "shift_factor": 0.0609, "scaling_factor": 1.5305},
                "text_encoder": _SD3_CLIP,
                "text_encoder_2": {**_SD3_CLIP, "hidden_act": "gelu"},  # CLIP-G is an OpenCLIP model
                "text_encoder_3": _TINY_T5,
                "tokenizer_3": _T5_TOKENIZER,
                "scheduler": {
                    "_class_name": "FlowMatchEulerDiscreteScheduler",
                    "num_train_timesteps": 1000,
                    "shift": 3.0,
                },
            },
        ),
    )
}

# Short name (the part after "builtin:") -> one-line description, for listings.
BUILTIN_MODELS: Mapping[str, str] = MappingProxyType(
    {spec.name.removeprefix(BUILTIN_PREFIX): spec.description for spec in _SPECS.values()}
)


def builtin_refs() -> str:
    """The built-in refs as a comma-separated list, for messages."""
    return ", ".join(_SPECS)


def builtin_spec(ref: str) -> BuiltinSpec:
    """Look up a built-in model by its ref.

    Args:
        ref: ``"builtin:<name>"``.

    Returns:
        The model's spec.

    Raises:
        ModelResolutionError: ``ref`` names no built-in model.
    """
    try:
        return _SPECS[ref]
    except KeyError:
        listing = "; ".join(f"{s.name} ({s.description})" for s in _SPECS.values())
        raise ModelResolutionError(
            f"Unknown built-in base model {ref!r}. Built-in models: {listing}."
        ) from None


def spec_hash(spec: BuiltinSpec) -> str:
    """12 hex digits of :func:`~brandtune.provenance.config_hash` over the spec's configs, the tokenizer corpus
    and the build version: the build's cache folder changes whenever any of them does."""
    payload = {
        "name": spec.name,
        "config": spec.config,
        "tokenizer": corpus_digest(),
        "build_version": _BUILD_VERSION,
        "seed": _SEED,
    }
    if (
        spec.family in _T5_TOKENIZER_FOLDER
    ):  # only these have a T5 tokenizer (and the older hashes stay as they were)
        payload["t5_tokenizer"] = t5_digest()
    return config_hash(payload, length=12)


def builtin_dir(spec: BuiltinSpec, settings: Settings | None = None) -> Path:
    """Where the build of ``spec`` lives (whether or not it exists yet)."""
    settings = settings or Settings.from_env()
    short = spec.name.removeprefix(BUILTIN_PREFIX)
    return settings.models_dir / "builtin" / f"{short}-{spec_hash(spec)}"


def shipped_dir(spec: BuiltinSpec) -> Path | None:
    """The prebuilt copy shipped inside the package, if there is one.

    This is the hook for shipping pretrained weights: put a diffusers folder (``model_index.json`` and the
    component folders) at ``brandtune/assets/<spec.asset>/`` and it is used instead of a random build. The
    settings a LoRA fine-tune should use on those weights ship beside them in ``brandtune_training.json``
    (:func:`brandtune.models.resolve.read_training_defaults`); a random build has none and gets the generic ones.
    """
    candidate = Path(__file__).resolve().parent.parent / "assets" / spec.asset
    return candidate if (candidate / "model_index.json").is_file() else None


def builtin_revision(folder: Path) -> str:
    """The content revision of a built-in model folder, cached inside it."""
    return cached_revision(folder, folder / REVISION_FILE)


def ensure_builtin(ref: str, settings: Settings | None = None) -> Path:
    """Return the folder of a built-in model, building it on first use.

    Args:
        ref: ``"builtin:<name>"``.
        settings: Where ``models_dir`` is; read from the environment when omitted.

    Returns:
        A complete diffusers folder.

    Raises:
        ModelResolutionError: ``ref`` names no built-in model.
    """
    spec = builtin_spec(ref)
    shipped = shipped_dir(spec)
    if shipped is not None:
        logger.debug("using the shipped copy of %s at %s", ref, shipped)
        return shipped
    target = builtin_dir(spec, settings)
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        started = time.perf_counter()
        _build(spec, tmp)
        builtin_revision(tmp)  # hash now, so a later resolve reads the cached value
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"ref": ref, "config_hash": spec_hash(spec)}) + "\n")
        _move_into_place(tmp, target)
        logger.info("built %s in %.1f s at %s", ref, time.perf_counter() - started, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    """``os.replace`` a finished build onto ``target``, yielding to a complete build already there."""
    try:
        os.replace(tmp, target)
        return
    except OSError:
        if (target / COMPLETE_MARKER).is_file():
            logger.debug("another process finished %s first; using its copy", target)
            return
    # An incomplete leftover (not made by this code, which only moves complete builds): set it aside, retry.
    stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
    os.replace(target, stale)
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, target)


def _build(spec: BuiltinSpec, dest: Path) -> None:
    """Build the pipeline described by ``spec`` with seeded random weights and save it to ``dest``."""
    import torch
    from transformers.utils import logging as hf_logging

    makers = {"sd1": _make_sd, "sdxl": _make_sdxl, "flux": _make_flux, "sd3": _make_sd3}
    with torch.random.fork_rng(devices=[]):
        pipe = makers[spec.family](spec)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar, noise for a 300 kB file
    try:
        pipe.save_pretrained(dest, safe_serialization=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    # transformers 5 saves tokenizer.json only; the classic files keep a CLIP folder loadable by older stacks.
    # A T5 folder gets brandtune's own tokenizer.json and tokenizer_config.json back, byte for byte.
    t5_folder = _T5_TOKENIZER_FOLDER.get(spec.family)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if not (dest / name).is_dir():
            continue
        if name == t5_folder:
            write_t5_tokenizer_files(dest / name, spec.config[name]["model_max_length"])
        else:
            write_clip_tokenizer_files(dest / name)
            if t5_folder is not None:  # the flow families only: the older builds' bytes stay as they were
                _drop_load_time_keys(dest / name / "tokenizer_config.json")


# Keys transformers 5 copies from from_pretrained's arguments into a saved tokenizer_config.json: they describe how
# the tokenizer was loaded (local_files_only follows HF_HUB_OFFLINE), not the tokenizer, and would make the build's
# bytes depend on the environment.
_LOAD_TIME_KEYS = ("is_local", "local_files_only")


def _drop_load_time_keys(path: Path) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _LOAD_TIME_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="brandtune-tokenizer-") as folder:
        write_clip_tokenizer_files(Path(folder))
        return CLIPTokenizer.from_pretrained(folder, model_max_length=MODEL_MAX_LENGTH)


def _t5_tokenizer(config: Mapping[str, Any]) -> Any:
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory(prefix="brandtune-t5-tokenizer-") as folder:
        write_t5_tokenizer_files(Path(folder), config["model_max_length"])
        return T5TokenizerFast.from_pretrained(folder)


def _seeded(factory: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    torch.manual_seed(_SEED)
    return factory(*args, **kwargs).eval()


def _text_config(tokenizer: Any, config: Mapping[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )


def _t5_config(tokenizer: Any, config: Mapping[str, Any]) -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **config,
    )


def _scheduler(config: Mapping[str, Any]) -> Any:
    import diffusers

    kwargs = dict(config)
    cls = getattr(diffusers, kwargs.pop("_class_name"))
    return cls(**kwargs)


def _make_sd(spec: BuiltinSpec) -> Any:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    cfg = spec.config
    tokenizer = _tokenizer()
    return StableDiffusionPipeline(
        unet=_seeded(UNet2DConditionModel, **cfg["unet"]),
        vae=_seeded(AutoencoderKL, **cfg["vae"]),
        text_encoder=_seeded(CLIPTextModel, _text_config(tokenizer, cfg["text_encoder"])),
        tokenizer=tokenizer,
        scheduler=_scheduler(cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _make_sdxl(spec: BuiltinSpec) -> Any:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg = spec.config
    tokenizer = _tokenizer()
    tokenizer_2 = _tokenizer()
    return StableDiffusionXLPipeline(
        unet=_seeded(UNet2DConditionModel, **cfg["unet"]),
        vae=_seeded(AutoencoderKL, **cfg["vae"]),
        text_encoder=_seeded(CLIPTextModel, _text_config(tokenizer, cfg["text_encoder"])),
        text_encoder_2=_seeded(CLIPTextModelWithProjection, _text_config(tokenizer_2, cfg["text_encoder_2"])),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=_scheduler(cfg["scheduler"]),
    )


def _make_flux(spec: BuiltinSpec) -> Any:
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    cfg = spec.config
    tokenizer = _tokenizer()
    tokenizer_2 = _t5_tokenizer(cfg["tokenizer_2"])
    return FluxPipeline(
        transformer=_seeded(FluxTransformer2DModel, **cfg["transformer"]),
        vae=_seeded(AutoencoderKL, **cfg["vae"]),
        text_encoder=_seeded(CLIPTextModel, _text_config(tokenizer, cfg["text_encoder"])),
        text_encoder_2=_seeded(T5EncoderModel, _t5_config(tokenizer_2, cfg["text_encoder_2"])),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=_scheduler(cfg["scheduler"]),
    )


def _make_sd3(spec: BuiltinSpec) -> Any:
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    cfg = spec.config
    tokenizer = _tokenizer()
    tokenizer_2 = _tokenizer()
    tokenizer_3 = _t5_tokenizer(cfg["tokenizer_3"])
    return StableDiffusion3Pipeline(
        transformer=_seeded(SD3Transformer2DModel, **cfg["transformer"]),
        vae=_seeded(AutoencoderKL, **cfg["vae"]),
        text_encoder=_seeded(CLIPTextModelWithProjection, _text_config(tokenizer, cfg["text_encoder"])),
        text_encoder_2=_seeded(CLIPTextModelWithProjection, _text_config(tokenizer_2, cfg["text_encoder_2"])),
        text_encoder_3=_seeded(T5EncoderModel, _t5_config(tokenizer_3, cfg["text_encoder_3"])),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        scheduler=_scheduler(cfg["scheduler"]),
    )
