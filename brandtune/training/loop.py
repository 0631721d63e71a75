"""The training loop: LoRA on a frozen base, cached latents, exact resume, one MLflow run.

Every random draw of a step (which examples, latent sample, noise, timesteps, flips) comes from a generator seeded
by (seed, micro-step, process), so a resumed run draws exactly what the uninterrupted run would have drawn; the
global RNG (LoRA dropout) is restored from the checkpoint.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.training import checkpoint as ckpt
from brandtune.training.data import Encoded, encode_text
from brandtune.training.plan import TrainPlan

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a training produced.

    Attributes:
        run_dir: The run folder (checkpoints/, adapter/, result.json).
        adapter_dir: The adapter folder.
        mlflow_run_id: The MLflow run (None on processes other than the main one).
        steps: Optimizer steps trained in all (including those before a resume).
        final_loss: The last step's loss.
        cache_hit: Whether the encoded dataset came from the latent cache.
        resumed_from: The step this process continued from (0: it started at the beginning).
        config_hash: The training's identity (dataset + resolved config + base and revision).
        invocation_id: Who ran it (a Prefect flow run, or a fresh local id).
    """

    run_dir: Path
    adapter_dir: Path
    mlflow_run_id: str | None
    steps: int
    final_loss: float
    cache_hit: bool
    resumed_from: int
    config_hash: str = ""
    invocation_id: str = ""

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> TrainResult:
        """Back from ``result.json`` (every value written as a string)."""
        run_id = data.get("mlflow_run_id")
        return cls(
            run_dir=Path(data["run_dir"]),
            adapter_dir=Path(data["adapter_dir"]),
            mlflow_run_id=None if run_id in (None, "", "None") else run_id,
            steps=int(data["steps"]),
            final_loss=float(data["final_loss"]),
            cache_hit=data.get("cache_hit") == "True",
            resumed_from=int(data.get("resumed_from", "0")),
            config_hash=data.get("config_hash", ""),
            invocation_id=data.get("invocation_id", ""),
        )


class Batches:
    """Deterministic batches: micro-step ``m`` of process ``r`` always gets the same examples."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int) -> None:
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int) -> Any:
        import torch

        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            }
        return self._perms[epoch]

    def indices(self, micro_step: int) -> list[int]:
        start = (micro_step * self.world + self.rank) * self.batch_size
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch_size)]


def step_generator(seed: int, micro_step: int, rank: int, stream: int = 0) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 1009 + rank * 31 + stream)


def _gather(encoded: Encoded, idx: list[int], flip: torch.Tensor | None, device: Any) -> dict[str, Any]:
    import torch

    index = torch.tensor(idx)
    if flip is not None:  # mirrored copies are stored after the originals
        index = index + flip.long() * (len(encoded) // 2)
    out = {k: v[index].to(device) for k, v in encoded.tensors().items()}
    return out


def diffusion_loss(
    plan: TrainPlan, models: dict[str, Any], batch: dict[str, Any], gen: torch.Generator
) -> Any:
    """Denoising loss of one batch (prior-preservation halves weighted), with min-SNR and noise offset."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    cfg, sched, unet = plan.config, plan.noise_scheduler, models["unet"]
    mean = batch["latent_mean"]
    latents = mean + batch["latent_std"] * torch.randn(mean.shape, generator=gen).to(mean.device)
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    if cfg.noise_offset:
        noise += cfg.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen).to(latents.device)
    bsz = latents.shape[0]
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=gen).to(latents.device)
    noisy = sched.add_noise(latents, noise, timesteps)
    if "prompt_embeds" in batch:
        embeds, pooled = batch["prompt_embeds"], batch.get("pooled_embeds")
    else:
        embeds, pooled = encode_text(plan.components, batch["input_ids"], tuple(models["text_encoders"]))
    kwargs = {}
    if plan.family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": batch["time_ids"]}
    dtype = plan.weight_dtype
    pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=embeds.to(dtype), **kwargs).sample.float()
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_example = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    if cfg.snr_gamma is not None:
        snr = compute_snr(sched, timesteps)
        weight = torch.clamp(snr, max=cfg.snr_gamma)
        weight = weight / (snr + 1) if sched.config.prediction_type == "v_prediction" else weight / snr
        per_example = per_example * weight
    n_instance = batch.get("n_instance", bsz)
    loss = per_example[:n_instance].mean()
    if n_instance < bsz:
        loss = loss + cfg.prior_loss_weight * per_example[n_instance:].mean()
    return loss


def make_batch(
    plan: TrainPlan, batches: Batches, class_batches: Batches | None, micro: int, device: Any
) -> tuple:
    import torch

    gen = step_generator(plan.config.seed, micro, plan.rank)
    idx = batches.indices(micro)
    flip = torch.rand(len(idx), generator=gen) < 0.5 if plan.config.random_flip else None
    batch = _gather(plan.encoded, idx, flip, device)
    if class_batches is not None and plan.class_encoded is not None:
        extra = _gather(plan.class_encoded, class_batches.indices(micro), None, device)
        batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
        batch["n_instance"] = len(idx)
    return batch, gen


def run_loop(
    plan: TrainPlan,
    accelerator: Any,
    models: dict[str, Any],
    optimizer: Any,
    lr_scheduler: Any,
    start_step: int,
    tracker: Any,
    resume_ckpt: Path | None,
) -> float:
    """Train from ``start_step`` to ``max_train_steps``; returns the last loss."""
    from tqdm.auto import tqdm

    cfg = plan.config
    trainable = [p for m in models["trained"] for p in m.parameters() if p.requires_grad]
    batches = Batches(
        len(plan.encoded) // (2 if cfg.random_flip else 1),
        cfg.train_batch_size,
        plan.world,
        plan.rank,
        cfg.seed,
    )
    class_batches = None
    if plan.class_encoded is not None:
        class_batches = Batches(
            len(plan.class_encoded), cfg.train_batch_size, plan.world, plan.rank, cfg.seed + 7
        )
    images_per_step = cfg.train_batch_size * plan.world * cfg.gradient_accumulation_steps
    bar = tqdm(
        range(start_step, cfg.max_train_steps),
        initial=start_step,
        total=cfg.max_train_steps,
        desc="train",
        unit="step",
        disable=not accelerator.is_main_process,
    )
    last_good = resume_ckpt
    loss_value = float("nan")
    for m in models["trained"]:
        m.train()
    for step in bar:
        t0 = time.perf_counter()
        for acc in range(cfg.gradient_accumulation_steps):
            micro = step * cfg.gradient_accumulation_steps + acc
            batch, gen = make_batch(plan, batches, class_batches, micro, accelerator.device)
            with accelerator.accumulate(*models["trained"]):
                with accelerator.autocast():
                    loss = diffusion_loss(plan, models, batch, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        lr_scheduler.step()
        loss_value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        if cfg.nan_check and not math.isfinite(loss_value):
            raise TrainingError(
                f"loss became {loss_value} at step {step + 1}; last good checkpoint: {last_good or 'none'}. "
                "Lower the learning rate, or train in full precision (mixed_precision: no)"
            )
        elapsed = time.perf_counter() - t0
        global_step = step + 1
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if tracker is not None:
            tracker.log_metrics(
                {
                    "loss": loss_value,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "step_time_s": elapsed,
                    "images_per_s": images_per_step / elapsed,
                },
                step=global_step,
            )
        if (
            cfg.checkpointing_steps
            and global_step % cfg.checkpointing_steps == 0
            and global_step < cfg.max_train_steps
        ):
            last_good = save_checkpoint(plan, accelerator, models, optimizer, lr_scheduler, global_step)
        if cfg.validation_steps and global_step % cfg.validation_steps == 0 and accelerator.is_main_process:
            from brandtune.training.validation import log_validation

            log_validation(plan, accelerator, models, tracker, global_step)
    bar.close()
    return loss_value


def save_checkpoint(
    plan: TrainPlan, accelerator: Any, models: dict[str, Any], optimizer: Any, lr_scheduler: Any, step: int
) -> Path | None:
    from accelerate.utils import gather_object

    rngs = gather_object([(plan.rank, ckpt.rng_state())])
    path = None
    if accelerator.is_main_process:
        trainable = {}
        for i, model in enumerate(models["trained"]):
            unwrapped = accelerator.unwrap_model(model)
            trainable.update({f"{i}/{n}": p for n, p in unwrapped.named_parameters() if p.requires_grad})
        path = ckpt.write_checkpoint(
            plan.run_dir / "checkpoints",
            step,
            trainable,
            optimizer.state_dict(),
            lr_scheduler.state_dict(),
            {
                "config_hash": plan.run_hash,
                "mlflow_run_id": plan.mlflow_run_id,
                "invocation_id": plan.config.invocation_id,
            },
            dict(rngs),
            plan.config.checkpoints_total_limit,
        )
        logger.info("checkpoint written: %s", path)
    accelerator.wait_for_everyone()
    return path


def restore_checkpoint(
    plan: TrainPlan, accelerator: Any, models: dict[str, Any], optimizer: Any, lr_scheduler: Any, folder: Path
) -> int:
    import torch

    data = ckpt.read_checkpoint(folder, plan.rank)
    if data["state"].get("config_hash") != plan.run_hash:
        raise TrainingError(
            f"checkpoint {folder} belongs to a different training config; use another output_dir"
        )
    with torch.no_grad():
        for i, model in enumerate(models["trained"]):
            params = dict(accelerator.unwrap_model(model).named_parameters())
            for name, value in data["trainable"].items():
                idx, pname = name.split("/", 1)
                if int(idx) == i:
                    params[pname].copy_(value)
    optimizer.load_state_dict(data["optimizer"])
    lr_scheduler.load_state_dict(data["scheduler"])
    ckpt.set_rng_state(*data["rng"])
    gc.collect()
    return int(data["state"]["step"])
