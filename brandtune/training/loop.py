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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandtune.errors import TrainingError
from brandtune.training import checkpoint as ckpt
from brandtune.training import fsdp
from brandtune.training.data import Encoded
from brandtune.training.ema import ema_weights
from brandtune.training.fastpath import adapters_off, cpu_bf16_step, step_autocast
from brandtune.training.plan import TrainPlan

if TYPE_CHECKING:
    import torch

    from brandtune.training.state import Models, TrainState

logger = logging.getLogger(__name__)


class Batches:
    """Deterministic batches: micro-step ``m`` of process ``r`` always gets the same examples, all from one bucket.

    One bucket (every example the same size): the examples in one permutation per epoch, cut into consecutive
    batches (a batch may run into the next epoch's permutation). Several buckets (aspect ratios): per epoch, each
    bucket's examples shuffled and cut into batches, its last batch filled up by wrapping around within the bucket
    (a bucket smaller than a batch repeats its examples), then the batches of all buckets shuffled together. Every
    permutation comes from a generator seeded by (seed, epoch), so a resumed run draws the same batches.
    """

    def __init__(self, n: int | list[int], batch_size: int, world: int, rank: int, seed: int) -> None:
        self.sizes = [n] if isinstance(n, int) else list(n)
        self.n, self.batch_size, self.world, self.rank, self.seed = (
            sum(self.sizes),
            batch_size,
            world,
            rank,
            seed,
        )
        self._perms: dict[int, torch.Tensor] = {}
        self._epochs: dict[int, list[tuple[int, list[int]]]] = {}
        self._per_epoch = sum(-(-size // batch_size) for size in self.sizes)

    def _perm(self, epoch: int) -> torch.Tensor:
        import torch

        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            }
        return self._perms[epoch]

    def _epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        import torch

        if epoch not in self._epochs:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            batches = []
            for bucket, size in enumerate(self.sizes):
                perm = torch.randperm(size, generator=gen).tolist()
                for first in range(0, size, self.batch_size):
                    batches.append((bucket, [perm[(first + k) % size] for k in range(self.batch_size)]))
            order = torch.randperm(len(batches), generator=gen).tolist()
            self._epochs = {epoch: [batches[i] for i in order]}
        return self._epochs[epoch]

    def draw(self, micro_step: int) -> tuple[int, list[int]]:
        """The bucket and the example indices (within the bucket) of micro-step ``micro_step``'s batch."""
        if len(self.sizes) == 1:
            start = (micro_step * self.world + self.rank) * self.batch_size
            return 0, [
                int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch_size)
            ]
        epoch, index = divmod(micro_step * self.world + self.rank, self._per_epoch)
        return self._epoch(epoch)[index]

    def indices(self, micro_step: int) -> list[int]:
        return self.draw(micro_step)[1]

    @classmethod
    def for_plan(cls, plan: TrainPlan) -> tuple[Batches, Batches | None]:
        """The instance batches of ``plan`` and, with prior preservation, its class batches."""
        cfg = plan.config
        assert plan.encoded is not None
        sizes = [len(enc) // (2 if cfg.random_flip else 1) for enc in plan.encoded]
        batches = cls(sizes, cfg.train_batch_size, plan.world, plan.rank, cfg.seed)
        class_batches = None
        if plan.class_encoded is not None:
            class_batches = cls(
                sum(len(enc) for enc in plan.class_encoded),
                cfg.train_batch_size,
                plan.world,
                plan.rank,
                cfg.seed + 7,
            )
        return batches, class_batches


def step_generator(
    seed: int, micro_step: int, rank: int, stream: int = 0, device: torch.device | None = None
) -> torch.Generator:
    """The generator of micro-step ``micro_step`` of process ``rank`` (on ``device``; default the CPU), seeded by
    all three and ``stream``: a resumed run draws what the uninterrupted run drew."""
    import torch

    gen = torch.Generator(device=device) if device is not None else torch.Generator()
    return gen.manual_seed((seed * 1_000_003 + micro_step) * 1009 + rank * 31 + stream)


def _gather(
    encoded: Encoded, idx: list[int], flip: torch.Tensor | None, device: torch.device
) -> dict[str, torch.Tensor]:
    import torch

    index = torch.tensor(idx)
    if flip is not None:  # mirrored copies are stored after the originals
        index = index + flip.long() * (len(encoded) // 2)
    out = {k: v[index].to(device) for k, v in encoded.tensors().items()}
    return out


def loss_weights(mask: torch.Tensor | None, background_weight: float) -> torch.Tensor | None:
    """Per-pixel loss weights from product masks ``(B, 1, h, w)`` at the latent grid: ``m + bg * (1 - m)``, scaled so
    each example's weights average 1 (the loss scale does not depend on the product's size). None (weigh every
    pixel alike) without masks or with ``background_weight`` 1, which is then exactly the unmasked loss. An
    example whose weights are all zero (an empty mask, background weight 0) weighs 1 everywhere."""
    if mask is None or background_weight >= 1.0:
        return None
    import torch

    w = mask + background_weight * (1.0 - mask)
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(mean > 0, w / mean.clamp_min(1e-12), torch.ones_like(w))


def diffusion_loss(
    plan: TrainPlan, models: Models, batch: dict[str, Any], gen: torch.Generator
) -> torch.Tensor:
    """The loss of one batch: the family's objective (DDPM or flow matching), prior-preservation halves weighted,
    each pixel weighted by the product mask when the batch has one (:func:`loss_weights`).

    Draws, in this order, from ``gen``: the latent sample, the noise, the noise offset (if any), then what the
    objective samples (timesteps or noise levels).
    """
    import torch

    cfg = plan.config
    if "prior" in batch:  # class images of another size than the instance bucket: a forward pass each
        instance = {k: v for k, v in batch.items() if k != "prior"}
        per_example = torch.cat(
            [_per_example(plan, models, instance, gen), _per_example(plan, models, batch["prior"], gen)]
        )
        n_instance = len(instance["latent_mean"])
    else:
        per_example = _per_example(plan, models, batch, gen)
        n_instance = batch.get("n_instance", len(per_example))
    loss = per_example[:n_instance].mean()
    if n_instance < len(per_example):
        loss = loss + cfg.prior_loss_weight * per_example[n_instance:].mean()
    return loss


def _per_example(
    plan: TrainPlan, models: Models, batch: dict[str, Any], gen: torch.Generator
) -> torch.Tensor:
    """Each example's loss ``(B,)``: mask- and timestep-weighted squared error of the family's objective."""
    import torch
    import torch.nn.functional as F

    cfg, ops = plan.config, plan.ops
    mean = batch["latent_mean"]
    on = gen.device  # the training device's own generator on a GPU (no draw on the host and copy per step)
    latents = mean + batch["latent_std"] * torch.randn(mean.shape, generator=gen, device=on).to(mean.device)
    noise = torch.randn(latents.shape, generator=gen, device=on).to(latents.device)
    if cfg.noise_offset:
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=gen, device=on)
        noise += cfg.noise_offset * offset.to(latents.device)
    noised = ops.noised(cfg, plan.noise_scheduler, latents, noise, gen)
    cond = ops.conditioning(plan, models, batch)
    pred = ops.predict(plan, models.denoiser, noised, cond, batch).float()
    target = noised.target.float()
    mask = batch.get("mask") if cfg.masked_loss else None
    if mask is not None and cfg.background_target == "base":
        target = mask * target + (1.0 - mask) * _base_prediction(plan, models, noised, cond, batch)
    se = F.mse_loss(pred, target, reduction="none")  # (B, C, h, w) for every family
    weights = loss_weights(mask, cfg.background_weight)
    per_example = (se if weights is None else se * weights).mean(dim=(1, 2, 3))
    if noised.weight is not None:
        per_example = per_example * noised.weight
    return per_example


def _base_prediction(
    plan: TrainPlan, models: Models, noised: Any, cond: dict[str, torch.Tensor], batch: dict[str, Any]
) -> torch.Tensor:
    """The frozen base model's prediction for the same input: the denoiser with its LoRA layers switched off."""
    import torch

    denoiser = getattr(models.denoiser, "module", models.denoiser)  # the model inside a DDP wrapper
    with adapters_off(denoiser), torch.no_grad():
        return plan.ops.predict(plan, denoiser, noised, cond, batch).float()


def _drop_captions(
    batch: dict[str, torch.Tensor], drop: torch.Tensor, empty: dict[str, torch.Tensor] | None
) -> None:
    """Replace the text conditioning of the rows ``drop`` marks with the empty caption's ``empty`` (one row,
    broadcast), in place; latents, masks and SDXL's ``time_ids`` stay."""
    import torch

    assert empty is not None, "caption_dropout is on: the empty caption is encoded with the dataset"
    if not drop.any():
        return
    for key, value in empty.items():
        rows = drop.to(batch[key].device).view(-1, *[1] * (batch[key].dim() - 1))
        batch[key] = torch.where(rows, value.to(batch[key].device, batch[key].dtype), batch[key])


def make_batch(
    plan: TrainPlan, batches: Batches, class_batches: Batches | None, micro: int, device: torch.device
) -> tuple[dict[str, Any], torch.Generator]:
    """Micro-step ``micro``'s batch on ``device`` and the generator its remaining random draws come from.

    The examples, flips and caption drops are drawn on the CPU (they index the cache there). On the CPU the
    remaining draws continue that generator; on another device they come from a generator on that device, seeded
    by the same micro-step (:func:`step_generator` stream 1), so no draw waits for the host."""
    import torch

    assert plan.encoded is not None
    gen = step_generator(plan.config.seed, micro, plan.rank)
    bucket, idx = batches.draw(micro)
    flip = torch.rand(len(idx), generator=gen) < 0.5 if plan.config.random_flip else None
    batch: dict[str, Any] = _gather(plan.encoded[bucket], idx, flip, device)
    if plan.config.caption_dropout:  # drawn after the draws above: with it off, a batch is what it always was
        drop = torch.rand(len(idx), generator=gen) < plan.config.caption_dropout
        _drop_captions(batch, drop, plan.empty_conditioning)
    if class_batches is not None and plan.class_encoded is not None:
        extra = _gather(plan.class_encoded[0], class_batches.indices(micro), None, device)
        if "mask" in batch:  # class images have no product: they weigh 1 everywhere
            shape = (len(extra["latent_mean"]), 1, *extra["latent_mean"].shape[-2:])
            extra["mask"] = torch.ones(shape, device=device)
        if extra["latent_mean"].shape[1:] != batch["latent_mean"].shape[1:]:
            batch["prior"] = extra
        else:
            batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
            batch["n_instance"] = len(idx)
    if (
        device.type != "cpu"
    ):  # the step's noise and timesteps: drawn on the device from a generator of its own
        gen = step_generator(plan.config.seed, micro, plan.rank, stream=1, device=device)
    return batch, gen


#: Steps between reads of the loss on the host. The NaN/inf check and the per-step metrics wait for the device
#: only this often (and before a checkpoint, a validation and the end), so a GPU step does not wait on the host;
#: a NaN loss still stops the training with the step it happened at, at most this many steps later.
LOSS_READ_EVERY = 10


class PendingLosses:
    """The reduced losses of the steps since the last read, still on the device, with each step's lr and time."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, torch.Tensor, float, float]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float, elapsed: float) -> None:
        self.rows.append((step, loss, lr, elapsed))

    def read(self) -> list[tuple[int, float, float, float]]:
        """``(step, loss, lr, seconds)`` of every pending step, in order: one wait for the device for all."""
        import torch

        if not self.rows:
            return []
        values = torch.stack([loss.float() for _, loss, _, _ in self.rows]).tolist()
        read = [(step, value, lr, el) for (step, _, lr, el), value in zip(self.rows, values, strict=True)]
        self.rows = []
        return read


def _read_losses(plan: TrainPlan, state: TrainState, pending: PendingLosses, last_good: Path | None) -> float:
    """Read the pending losses, stop on the first NaN/inf (naming its step), log each step's metrics; returns
    the last loss (NaN when none was pending)."""
    loss_value = float("nan")
    for step, loss_value, lr, elapsed in pending.read():
        if plan.config.nan_check and not math.isfinite(loss_value):
            raise TrainingError(
                f"loss became {loss_value} at step {step}; last good checkpoint: {last_good or 'none'}. "
                "Lower the learning rate, or train in full precision (mixed_precision: no)"
            )
        _log_step(plan, state, step, loss_value, elapsed, lr)
    return loss_value


def run_loop(plan: TrainPlan, state: TrainState, start_step: int, resume_ckpt: Path | None) -> float:
    """Train from ``start_step`` to ``max_train_steps``; returns the last loss.

    The loss is read on the host every :data:`LOSS_READ_EVERY` steps, before each checkpoint and validation, and
    at the end (:class:`PendingLosses`): a checkpoint is written only after every loss before it was finite.
    """
    from tqdm.auto import tqdm

    from brandtune.training.validation import log_validation

    cfg, accelerator = plan.config, state.accelerator
    sharded = fsdp.is_sharded(accelerator)  # then every process validates: the sharded forward is collective
    trainable = state.models.trainable_parameters()
    batches, class_batches = Batches.for_plan(plan)
    bar = tqdm(
        range(start_step, cfg.max_train_steps),
        initial=start_step,
        total=cfg.max_train_steps,
        desc="train",
        unit="step",
        disable=not accelerator.is_main_process,
        mininterval=1.0,
    )
    last_good = resume_ckpt
    loss_value = float("nan")
    pending = PendingLosses()
    plan.step_bf16 = cpu_bf16_step(plan, accelerator)
    for m in state.models.trained:
        m.train()
    for step in bar:
        t0 = time.perf_counter()
        loss = optimizer_step(plan, state, batches, class_batches, step, trainable)
        state.lr_scheduler.step()
        lr = state.lr_scheduler.get_last_lr()[0]  # (after the step, as the metric always was)
        global_step = step + 1
        # on a GPU, the time to queue the step's work (the device catches up at the next read)
        pending.add(
            global_step, accelerator.reduce(loss.detach(), reduction="mean"), lr, time.perf_counter() - t0
        )
        checkpoint = _every(cfg.checkpointing_steps, global_step) and global_step < cfg.max_train_steps
        validate = _every(cfg.validation_steps, global_step) and (accelerator.is_main_process or sharded)
        if checkpoint or validate or global_step % LOSS_READ_EVERY == 0 or global_step == cfg.max_train_steps:
            loss_value = _read_losses(plan, state, pending, last_good)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if checkpoint:
            last_good = save_checkpoint(plan, state, global_step)
        if validate:
            with ema_weights(state):  # what the adapter would be now
                log_validation(plan, state, global_step)
    bar.close()
    return loss_value


def _every(interval: int, step: int) -> bool:
    """Whether something done every ``interval`` steps (0: never) is due at ``step``."""
    return bool(interval) and step % interval == 0


def optimizer_step(
    plan: TrainPlan,
    state: TrainState,
    batches: Batches,
    class_batches: Batches | None,
    step: int,
    trainable: list[torch.nn.Parameter],
) -> torch.Tensor:
    """One optimizer step: ``gradient_accumulation_steps`` micro-batches, then the EMA update (if on); returns the
    last micro-batch's loss."""
    cfg, accelerator, optimizer = plan.config, state.accelerator, state.optimizer
    for acc in range(cfg.gradient_accumulation_steps):
        if cfg.compile == "reduce-overhead":
            import torch

            # a new iteration for the CUDA graphs: the previous one's outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        micro = step * cfg.gradient_accumulation_steps + acc
        batch, gen = make_batch(plan, batches, class_batches, micro, accelerator.device)
        with accelerator.accumulate(*state.models.trained):
            with step_autocast(plan, accelerator):
                loss = diffusion_loss(plan, state.models, batch, gen)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # the loop above ends on the micro-batch whose gradients were synced and applied: one update per step
    if state.ema is not None:
        state.ema.update(step + 1)
    return loss


def _log_step(
    plan: TrainPlan, state: TrainState, global_step: int, loss_value: float, elapsed: float, lr: float
) -> None:
    """A step's loss, learning rate and speed to the tracker (main process)."""
    if state.tracker is None:
        return
    cfg = plan.config
    images_per_step = cfg.train_batch_size * plan.world * cfg.gradient_accumulation_steps
    state.tracker.log_metrics(
        {
            "loss": loss_value,
            "lr": lr,
            "step_time_s": elapsed,
            "images_per_s": images_per_step / elapsed,
        },
        step=global_step,
    )


def save_checkpoint(plan: TrainPlan, state: TrainState, step: int) -> Path | None:
    """Write a checkpoint of ``step`` (main process; every process hands its RNG state over, and under FSDP its
    shards of the weights, their EMA and the optimizer state); returns its folder on the main process."""
    from accelerate.utils import gather_object

    accelerator = state.accelerator
    rngs = gather_object([(plan.rank, ckpt.rng_state())])
    path = None
    trainable = {}
    for i, model in enumerate(state.models.trained):
        weights = fsdp.trainable_weights(accelerator.unwrap_model(model))
        trainable.update({f"{i}/{n}": p for n, p in weights.items()})
    optimizer_state = fsdp.whole_optimizer_state(state.optimizer.state_dict())
    ema = state.ema.whole() if state.ema is not None else None
    if accelerator.is_main_process:
        path = ckpt.write_checkpoint(
            plan.run_dir / "checkpoints",
            step,
            trainable,
            optimizer_state,
            state.lr_scheduler.state_dict(),
            {
                "config_hash": plan.run_hash,
                "mlflow_run_id": plan.mlflow_run_id,
                "invocation_id": plan.config.invocation_id,
                "world_size": plan.world,  # a resume must run as many processes (checkpoint.check_world)
            },
            dict(rngs),
            plan.config.checkpoints_total_limit,
            ema,
        )
        logger.info("checkpoint written: %s", path)
    accelerator.wait_for_everyone()
    return path


def restore_checkpoint(plan: TrainPlan, state: TrainState, folder: Path) -> int:
    """Load ``folder`` into the models, their EMA, optimizer, schedule and RNGs; returns the step it continues
    from."""
    import torch

    data = ckpt.read_checkpoint(folder, plan.rank)
    if data["state"].get("config_hash") != plan.run_hash:
        raise TrainingError(
            f"checkpoint {folder} belongs to a different training config; use another output_dir"
        )
    with torch.no_grad():
        for i, model in enumerate(state.models.trained):
            params = dict(state.accelerator.unwrap_model(model).named_parameters())
            for name, value in data["trainable"].items():
                idx, pname = name.split("/", 1)
                if int(idx) == i:
                    params[pname].copy_(fsdp.like(value, params[pname]))
    if state.ema is not None:
        if data["ema"] is None:  # the config hash covers ema_decay: only a hand-edited folder gets here
            raise TrainingError(
                f"checkpoint {folder} has no EMA weights (ema.safetensors); use another output_dir"
            )
        state.ema.load(data["ema"])
    state.optimizer.load_state_dict(data["optimizer"])
    fsdp.shard_optimizer_state(state.optimizer)
    state.lr_scheduler.load_state_dict(data["scheduler"])
    ckpt.set_rng_state(*data["rng"])
    gc.collect()
    return int(data["state"]["step"])
