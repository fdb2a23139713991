"""The training loop: SGD with warm-up and steps, gradient clipping, AMP on CUDA, DDP, checkpoints, exact resume,
periodic evaluation."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable

import torch
from torch import nn

from ..data.loader import train_loader
from .checkpoint import (get_rng_state, load_checkpoint, remove_stale_temporaries, save_atomic, set_rng_state,
                         train_seconds)
from .distributed import DistInfo, all_gather_objects, all_reduce_mean, barrier, broadcast_buffers
from .progress import MetricsLog, Progress
from .solver import TrainConfig, build_optimizer, build_scheduler, lr_factor

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"


def _to_device(images: list, targets: list, device: torch.device) -> tuple[list, list]:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def _last_good(ckpt_path: str) -> str:
    return ckpt_path if os.path.isfile(ckpt_path) else "none written yet"


def train(
    model: nn.Module,
    dataset,
    cfg: TrainConfig,
    *,
    output_dir: str,
    dist_info: DistInfo = DistInfo(),
    resume: bool = False,
    meta: dict | None = None,
    show_progress: bool = True,
    evaluate: Callable[[nn.Module, int], object] | None = None,
    eval_period: int = 0,
) -> nn.Module:
    """Trains ``model`` on ``dataset`` for ``cfg.max_iter`` iterations and returns the (unwrapped) model.

    Args:
        model: returns a dict of scalar losses from ``model(images, targets)`` in training mode.
        dataset: yields ``(image, target)`` and accepts ``(index, seed)`` keys (see ``CocoInstances``).
        output_dir: receives ``checkpoint.pth`` (latest, written atomically every ``cfg.checkpoint_period`` and at the
            end) and ``metrics.jsonl``; only rank 0 writes.
        resume: continue from ``output_dir/checkpoint.pth`` when it exists: weights, optimizer, LR schedule, iteration
            and RNG state, with the data stream positioned where it stopped. Under DDP a run that restores no RNG
            state seeds each process' torch RNG with ``cfg.seed + rank`` (as detectron2) after the model is built.
        meta: stored in each checkpoint (model config, categories, split) so evaluation can rebuild the model.
        evaluate: called by every process as ``evaluate(model, iteration)`` with the (unwrapped) model every
            ``eval_period`` iterations before the last one (the caller evaluates the final model) and logs what it
            measures, e.g. ``evaluation.evaluate_model`` then ``evaluation.log_evaluation`` on rank 0.

    Raises:
        FloatingPointError: a loss became NaN or infinite; names the iteration, the last good checkpoint stays in place.
    """
    cfg.validate()
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    ckpt_path = os.path.join(output_dir, CHECKPOINT_NAME)
    started = time.time()
    start_iter, loaded, restored, seconds_before = 0, False, False, 0.0
    if resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_iter, loaded = int(state["iteration"]), True
        seconds_before = train_seconds(state)
        # The schedule is this run's (--iters, --steps, --warmup may change on resume): the optimizer holds the LR of
        # the old schedule, which LambdaLR.load_state_dict does not recompute, and the first step would take it.
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_factor(start_iter, cfg)
        rng = state.get("rng") or []
        if len(rng) == world:
            set_rng_state(rng[rank], device)
            restored = True
        elif dist_info.is_main:
            held = f"the random state of {len(rng)} processes" if rng else "no random state"
            logger.warning("%s records %s and this run has %d: each process draws from seed + rank from here on (the "
                           "data stream continues as before)", ckpt_path, held, world)
        if dist_info.is_main:
            logger.info("resumed from %s at iteration %d", ckpt_path, start_iter)
            if start_iter >= cfg.max_iter:  # as detectron2: the run is complete, the model is evaluated as it is
                logger.warning("the checkpoint is at iteration %d of %d (--iters): nothing left to train",
                               start_iter, cfg.max_iter)
    elif resume and dist_info.is_main:
        logger.info("no checkpoint in %s: starting from scratch", output_dir)
    if not restored and (world > 1 or loaded):
        # As detectron2 (seed + rank): each process draws its own RoI samples and dropout masks; with one seed the
        # processes would draw alike. The weights were initialised before, from one seed, and DDP broadcasts rank 0's.
        # (A new single-process run keeps the stream its weights were drawn from.)
        torch.manual_seed(cfg.seed + rank)

    net = model
    if world > 1:
        # Every parameter gets a gradient in every step (losses without a target are exact zeros that keep the graph,
        # pyramid levels without RoIs get zero gradients), so DDP need not search the graph for unused parameters.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
    use_amp = cfg.amp and device.type == "cuda"
    batches = train_loader(dataset, batch_size=cfg.batch_size // world, seed=cfg.seed, rank=rank, world_size=world,
                           start_iter=start_iter, num_workers=cfg.num_workers,
                           aspect_ratio_grouping=cfg.aspect_ratio_grouping, pin_memory=device.type == "cuda")
    progress = Progress(total=cfg.max_iter, start=start_iter, enabled=show_progress and dist_info.is_main)
    log = MetricsLog(os.path.join(output_dir, "metrics.jsonl")) if dist_info.is_main else None
    if log is not None:
        log.keep_until(start_iter)
        remove_stale_temporaries(ckpt_path)  # a process killed while writing a checkpoint leaves its temporary file
    net.train()
    window: dict[str, list[float]] = {}
    for iteration in range(start_iter, cfg.max_iter):
        images, targets = _to_device(*next(batches), device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            try:
                loss_dict = net(images, targets)
            except FloatingPointError as e:  # the model's own check (e.g. the RPN's non-finite boxes)
                raise FloatingPointError(f"{e} at iteration {iteration + 1}; training stopped, last good checkpoint: "
                                         f"{_last_good(ckpt_path)}") from e
        losses = torch.stack([v.float() for v in loss_dict.values()])
        # Every process must agree to stop, or the others would hang in the next all-reduce.
        finite = all_reduce_mean(torch.isfinite(losses).all().float().reshape(1).to(device))
        if finite.item() < 1.0:
            bad = {k: float(v) for k, v in loss_dict.items() if not math.isfinite(float(v))}
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration + 1} ({bad or 'on another process'}); training stopped, "
                f"last good checkpoint: {_last_good(ckpt_path)}"
            )
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = iteration + 1

        reduced = all_reduce_mean(losses.detach()).tolist()
        for k, v in zip(loss_dict.keys(), reduced):
            window.setdefault(k, []).append(v)
        if done % cfg.log_period == 0 or done == cfg.max_iter:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            progress.update(done, means, lr)
            if log is not None:
                log.write({"iteration": done, "lr": lr, "loss": sum(means.values()), **means,
                           "seconds_per_iter": progress.seconds_per_iter(done), "time": time.time()})
        if done % cfg.checkpoint_period == 0 or done == cfg.max_iter:
            save_checkpoint(model, optimizer, scheduler, done, ckpt_path, dist_info=dist_info, meta=meta,
                            train_seconds=seconds_before + time.time() - started)
        if evaluate is not None and eval_period > 0 and done % eval_period == 0 and done < cfg.max_iter:
            eval_start = time.perf_counter()
            broadcast_buffers(model)
            evaluate(model, done)
            net.train()
            progress.t0 += time.perf_counter() - eval_start  # s/it and ETA count training only
    broadcast_buffers(model)  # every process returns the checkpoint's model
    return model


def save_checkpoint(model, optimizer, scheduler, iteration: int, path: str, *, dist_info: DistInfo,
                    meta: dict | None = None, train_seconds: float = 0.0) -> None:
    """Gathers every process' RNG state and lets rank 0 write the checkpoint atomically (with the wall seconds of
    training up to it, over every resumed segment)."""
    rng = all_gather_objects(get_rng_state(dist_info.device))
    if dist_info.is_main:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "iteration": iteration, "rng": rng, "meta": meta or {},
                     "train_seconds": train_seconds}, path)
    barrier()
