"""What differs between families in training, behind one small interface; the loop (:mod:`.loop`) is shared.

A family's :class:`FamilyOps` answers four questions:

- **conditioning** (:meth:`FamilyOps.encode_captions`, :meth:`FamilyOps.encode_ids`): the per-example tensors the
  denoiser is conditioned on, computed once and cached with the latents (the text encoders are then freed);
- **noising** (:meth:`FamilyOps.noised`): how a clean latent, noise and the step's generator make the model input,
  its timesteps, the regression target and the per-example loss weight: DDPM noise/velocity prediction for the
  UNets, flow matching (x_t = (1 - sigma) x_0 + sigma eps, target eps - x_0) for FLUX and SD3;
- **prediction** (:meth:`FamilyOps.predict`): one call of the denoiser on a batch;
- **checks** (:meth:`FamilyOps.check`): the family's up-front errors, before any weights load.

Every random draw takes the step's generator, in a fixed order, so resume stays exact for every family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.models.family import FAMILY_INFO, Family
from brandtune.models.resolve import vae_scale_factor
from brandtune.sampling import default_sequence_length

if TYPE_CHECKING:
    import torch

    from brandtune.config import TrainConfig
    from brandtune.models import BaseComponents, ResolvedBase


@dataclass
class Noised:
    """A batch made ready for the denoiser: its input, timesteps, target and per-example loss weight."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None = None  # (B,), None: 1


class FamilyOps:
    """The UNet families (SD 1.x/2.x, SDXL): CLIP conditioning, DDPM objective (epsilon or v-prediction)."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.info = FAMILY_INFO[family]

    # Checks -----------------------------------------------------------------------------------------------------
    def check(self, config: TrainConfig, resolved: ResolvedBase, resolution: int) -> None:
        """Raise a :class:`TrainingError` for a config this family cannot train, before anything loads."""
        multiple = self.resolution_multiple(resolved.path)
        if resolution % multiple:
            lower = max(multiple, resolution // multiple * multiple)
            raise TrainingError(
                f"resolution {resolution} is not divisible by {multiple} ({self.multiple_reason(resolved.path)}) "
                f"for {resolved.name}; use {lower} or {lower + multiple}"
            )

    def resolution_multiple(self, folder: Path) -> int:
        """Image sizes must be a multiple of this: VAE factor x UNet downsampling."""
        unet = _config(folder, "unet")
        return vae_scale_factor(_config(folder, "vae")) * 2 ** (len(unet.get("block_out_channels", [0])) - 1)

    def multiple_reason(self, folder: Path) -> str:
        return "VAE factor x UNet downsampling"

    # Conditioning -----------------------------------------------------------------------------------------------
    def tokenize(self, components: BaseComponents, captions: list[str]) -> torch.Tensor:
        """Token ids ``(N, E, L)`` for the E text encoders (kept in the cache: a trained text encoder reads them)."""
        import torch

        ids = [
            tok(
                captions,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tok in components.tokenizers
        ]
        return torch.stack(ids, dim=1)

    def encode_ids(
        self, components: BaseComponents, input_ids: torch.Tensor, text_encoders: tuple | None = None
    ) -> dict[str, torch.Tensor]:
        """Prompt embeddings ``(N, L, D)`` and, for SDXL, pooled embeddings ``(N, D2)``.

        SD 1.x/2.x use the last hidden state; SDXL concatenates both encoders' penultimate hidden states and takes
        the pooled projection of the second, as its pipeline does.
        """
        import torch

        encoders = text_encoders or components.text_encoders
        if self.family != "sdxl":
            enc = encoders[0]
            return {"prompt_embeds": enc(input_ids[:, 0].to(enc.device))[0]}
        hidden, pooled = [], None
        for i, enc in enumerate(encoders):
            out = enc(input_ids[:, i].to(enc.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected pooled output
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled_embeds": pooled}

    def encode_captions(
        self, components: BaseComponents, captions: list[str], config: TrainConfig, *, with_text: bool
    ) -> dict[str, torch.Tensor]:
        """The cached conditioning of ``captions``: token ids, and their embeddings unless text is trained."""
        ids = self.tokenize(components, captions)
        out = {"input_ids": ids}
        if with_text:
            out.update({k: v.float().cpu() for k, v in self.encode_ids(components, ids).items()})
        return out

    def text_key(self, config: TrainConfig) -> dict[str, Any] | None:
        """The config fields the cached conditioning depends on, for the cache key (none for the UNets)."""
        return None

    def conditioning(self, plan: Any, models: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's conditioning: cached embeddings, or the trained text encoders run on its token ids."""
        if "prompt_embeds" in batch:
            return {k: batch[k] for k in ("prompt_embeds", "pooled_embeds") if k in batch}
        return self.encode_ids(plan.components, batch["input_ids"], models.text_encoders)

    # Objective --------------------------------------------------------------------------------------------------
    def prepare(self, components: BaseComponents, config: TrainConfig) -> None:
        """Set up once what the step needs: the denoiser compiled as ``config.compile`` says (its LoRA layers are
        attached by now); nothing else for DDPM."""
        compile_denoiser(components.denoiser, config.compile)

    def noised(
        self,
        config: TrainConfig,
        scheduler: Any,
        latents: torch.Tensor,
        noise: torch.Tensor,
        gen: torch.Generator,
    ) -> Noised:
        """DDPM: uniform timesteps, ``add_noise``; target noise or velocity; min-SNR weight if asked."""
        import torch
        from diffusers.training_utils import compute_snr

        bsz = latents.shape[0]
        steps = scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (bsz,), generator=gen, device=gen.device).to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        v_prediction = scheduler.config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        weight = None
        if config.snr_gamma is not None:
            snr = compute_snr(scheduler, timesteps)
            weight = torch.clamp(snr, max=config.snr_gamma)
            weight = weight / (snr + 1) if v_prediction else weight / snr
        return Noised(noisy, timesteps, target, weight)

    def predict(
        self,
        plan: Any,
        denoiser: torch.nn.Module,
        noised: Noised,
        cond: dict[str, torch.Tensor],
        batch: dict[str, Any],
    ) -> torch.Tensor:
        dtype = plan.weight_dtype
        kwargs: dict[str, Any] = {}
        if self.family == "sdxl":
            kwargs["added_cond_kwargs"] = {
                "text_embeds": cond["pooled_embeds"],
                "time_ids": batch["time_ids"],
            }
        embeds = cond["prompt_embeds"].to(dtype)
        return denoiser(
            noised.noisy.to(dtype), noised.timesteps, encoder_hidden_states=embeds, **kwargs
        ).sample


class FlowOps(FamilyOps):
    """The flow-matching transformers (FLUX.1, SD3/3.5): conditioning from the pipeline's own prompt encoding,
    rectified-flow objective with the SD3 paper's timestep densities and loss weights."""

    def __init__(self, family: Family) -> None:
        super().__init__(family)
        self._timesteps: torch.Tensor | None = None
        self._sigmas: torch.Tensor | None = None

    def check(self, config: TrainConfig, resolved: ResolvedBase, resolution: int) -> None:
        super().check(config, resolved, resolution)
        label = self.info.label
        if config.train_text_encoder:
            raise TrainingError(
                f"train_text_encoder is not supported for {label} bases: brandtune trains the transformer's LoRA "
                "there (its T5 alone is ~9 GB); set train_text_encoder: false"
            )
        if config.snr_gamma is not None or config.noise_offset:
            raise TrainingError(
                f"snr_gamma and noise_offset belong to the DDPM objective of the UNet families; {label} trains "
                "with flow matching: leave them empty and choose weighting_scheme (and flow_shift) instead"
            )
        if config.export_kohya and self.family != "flux":
            raise TrainingError(
                f"export_kohya writes the kohya layout of SD, SDXL and FLUX LoRAs; there is none for {label} "
                "(ComfyUI loads its diffusers-format file): set export_kohya: false"
            )
        t5 = self.info.text_encoders[-1]
        limit = _tokenizer_max_length(resolved.path / t5.tokenizer_folder)
        if (
            config.max_sequence_length is not None
            and limit is not None
            and config.max_sequence_length > limit
        ):
            raise TrainingError(
                f"max_sequence_length {config.max_sequence_length} is more than {resolved.name}'s T5 tokenizer "
                f"takes ({limit}, {t5.tokenizer_folder}/tokenizer_config.json); use at most {limit}"
            )

    def resolution_multiple(self, folder: Path) -> int:
        """FLUX packs 2x2 latents into one token; SD3 patches them by its ``patch_size``."""
        patch = int(_config(folder, "transformer").get("patch_size", 1 if self.family == "flux" else 2))
        return vae_scale_factor(_config(folder, "vae")) * (2 * patch if self.family == "flux" else patch)

    def multiple_reason(self, folder: Path) -> str:
        what = "FLUX's 2x2 latent packing" if self.family == "flux" else "SD3's patch size"
        return f"VAE factor x {what}"

    def sequence_length(self, components: BaseComponents, config: TrainConfig) -> int:
        return default_sequence_length(
            self.family, components.tokenizers[-1].model_max_length, config.max_sequence_length
        )

    def encode_captions(
        self, components: BaseComponents, captions: list[str], config: TrainConfig, *, with_text: bool
    ) -> dict[str, torch.Tensor]:
        """Prompt embeddings exactly as the family's pipeline makes them (its ``encode_prompt``), pooled ones too."""
        import diffusers

        pipe_cls = getattr(diffusers, self.info.pipeline_class)
        parts: dict[str, Any] = {"scheduler": None, "vae": None, "transformer": None}
        for spec, enc, tok in zip(
            self.info.text_encoders, components.text_encoders, components.tokenizers, strict=True
        ):
            parts[spec.folder], parts[spec.tokenizer_folder] = enc, tok
        pipe = pipe_cls(**parts)
        device = components.text_encoders[0].device
        length = self.sequence_length(components, config)
        if self.family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(captions, None, device=device, max_sequence_length=length)
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(
                captions,
                None,
                None,
                device=device,
                do_classifier_free_guidance=False,
                max_sequence_length=length,
            )
        return {"prompt_embeds": embeds.float().cpu(), "pooled_embeds": pooled.float().cpu()}

    def text_key(self, config: TrainConfig) -> dict[str, Any] | None:
        return {"max_sequence_length": config.max_sequence_length}

    def conditioning(self, plan: Any, models: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": batch["prompt_embeds"], "pooled_embeds": batch["pooled_embeds"]}

    def prepare(self, components: BaseComponents, config: TrainConfig) -> None:
        """The denoiser compiled as asked (:meth:`FamilyOps.prepare`) and the noise levels training samples from:
        the base scheduler's, or re-shifted by ``flow_shift``."""
        super().prepare(components, config)
        scheduler = components.noise_scheduler
        if config.flow_shift is not None:
            scheduler = type(scheduler).from_config(
                scheduler.config, shift=config.flow_shift, use_dynamic_shifting=False
            )
        self._timesteps = scheduler.timesteps.float().cpu()
        self._sigmas = scheduler.sigmas[: len(self._timesteps)].float().cpu()

    def noised(
        self,
        config: TrainConfig,
        scheduler: Any,
        latents: torch.Tensor,
        noise: torch.Tensor,
        gen: torch.Generator,
    ) -> Noised:
        """x_t = (1 - sigma) x_0 + sigma eps at a sampled noise level; target eps - x_0; SD3-paper weighting."""
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        assert self._timesteps is not None and self._sigmas is not None, "prepare() first"
        bsz = latents.shape[0]
        u = compute_density_for_timestep_sampling(
            config.weighting_scheme,
            bsz,
            config.logit_mean,
            config.logit_std,
            config.mode_scale,
            device=gen.device,  # drawn where the generator is (the training device on a GPU)
            generator=gen,
        )
        index = (u * len(self._timesteps)).long().clamp(0, len(self._timesteps) - 1)
        timesteps = self._timesteps[index].to(latents.device)
        sigmas = self._sigmas[index].to(latents.device).view(bsz, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        weight = compute_loss_weighting_for_sd3(config.weighting_scheme, sigmas).view(bsz)
        return Noised(noisy, timesteps, noise - latents, weight)

    def predict(
        self,
        plan: Any,
        denoiser: torch.nn.Module,
        noised: Noised,
        cond: dict[str, torch.Tensor],
        batch: dict[str, Any],
    ) -> torch.Tensor:
        dtype = plan.weight_dtype
        embeds, pooled = cond["prompt_embeds"].to(dtype), cond["pooled_embeds"].to(dtype)
        x = noised.noisy.to(dtype)
        if self.family == "sd3":
            return denoiser(
                hidden_states=x,
                timestep=noised.timesteps,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        import torch

        b, _, h, w = x.shape
        packed = pack_latents(x)
        img_ids = latent_image_ids(h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype)
        guidance = None
        if plan.components.denoiser.config.guidance_embeds:  # FLUX.1-dev; schnell has no guidance embedding
            guidance = torch.full((b,), plan.config.guidance, device=x.device, dtype=torch.float32)
        out = denoiser(
            hidden_states=packed,
            timestep=noised.timesteps / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's packing: ``(B, C, H, W)`` latents to ``(B, H/2 * W/2, 4C)`` tokens of 2x2 patches."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`, for a latent grid of ``height`` x ``width``."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX's position ids of the packed tokens: ``(rows * cols, 3)``, (0, row, column) each."""
    import torch

    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def family_ops(family: Family) -> FamilyOps:
    """The training pieces of ``family``."""
    return FlowOps(family) if FAMILY_INFO[family].flow_matching else FamilyOps(family)


def _config(folder: Path, component: str) -> dict[str, Any]:
    return json.loads((folder / component / "config.json").read_text())


def _tokenizer_max_length(folder: Path) -> int | None:
    path = folder / "tokenizer_config.json"
    try:
        value = json.loads(path.read_text()).get("model_max_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int | float) and value < 1e9 else None


def compile_denoiser(denoiser: torch.nn.Module, mode: str) -> list[str]:
    """Compile ``denoiser`` in place (the module stays itself: peft, accelerate and saving see no wrapper).

    ``regional``: only its repeated blocks, each compiled once and reused (seconds instead of minutes of compile
    time, most of the speed-up): diffusers' ``compile_repeated_blocks`` where the model names its
    ``_repeated_blocks`` (the UNets' ``BasicTransformerBlock``, FLUX's double and single blocks), else every block
    of the model's block lists (``nn.ModuleList`` items, e.g. SD3's ``transformer_blocks``). ``full``: the whole
    model with ``torch.compile``; ``reduce-overhead``: the same with CUDA graphs (the caller checks for a CUDA
    device and static shapes: :func:`check_cuda_graphs`). ``none``: nothing. Returns the class names of the
    compiled modules.
    """
    import torch

    if mode == "none":
        return []
    if mode in ("full", "reduce-overhead"):
        denoiser.compile(**({"mode": mode} if mode == "reduce-overhead" else {}))
        return [type(denoiser).__name__]
    if getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks()
        names = set(denoiser._repeated_blocks)
        return sorted({type(m).__name__ for m in denoiser.modules() if type(m).__name__ in names})
    compiled = set()
    for blocks in [m for m in denoiser.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in blocks:
            block.compile()
            compiled.add(type(block).__name__)
    return sorted(compiled)


def check_cuda_graphs(mode: str, device: torch.device, shapes: int | None = None) -> None:
    """Raise a :class:`TrainingError` when ``compile: reduce-overhead`` cannot run: CUDA graphs replay kernels
    recorded on a CUDA device for fixed tensor shapes, so they need a CUDA device and (once the data is encoded)
    one batch shape; ``shapes``: how many the training has (None: not known yet)."""
    if mode != "reduce-overhead":
        return
    if device.type != "cuda":
        raise TrainingError(
            f"compile: reduce-overhead records CUDA graphs and needs a CUDA GPU, but this training runs on "
            f"{device.type}; use compile: full or none"
        )
    if shapes is not None and shapes > 1:
        raise TrainingError(
            f"compile: reduce-overhead needs one batch shape (CUDA graphs replay fixed shapes), but this training "
            f"has {shapes} (aspect buckets, or class images of another size); set aspect_buckets: false or use "
            "compile: full"
        )
