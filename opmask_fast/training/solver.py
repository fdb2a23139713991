"""Solver settings, SGD with per-group weight decay, and the warm-up + step learning-rate schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..config import PRESETS


@dataclass
class TrainConfig:
    max_iter: int = 800  # iterations (batches): 3.2 epochs of the 1000 synthetic training images at batch 4
    batch_size: int = 4  # images per iteration over all processes; each of N processes takes batch_size / N
    base_lr: float = 0.02  # detectron2's 0.02 is for batch 16; small batches still train well at this LR with warm-up
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # no decay on norm scales/shifts (detectron2)
    warmup_iters: int = 100  # linear warm-up from warmup_factor * base_lr: keeps early BN/RPN statistics from exploding
    warmup_factor: float = 0.001
    steps: tuple[int, ...] = (666,)  # LR x gamma at each of these iterations (5/6 of the run)
    gamma: float = 0.1
    clip_value: float | None = 1.0  # OPMask clips gradients by value at 1.0; None disables clipping
    amp: bool = True  # mixed precision (bfloat16 autocast); only ever used on CUDA
    seed: int = 0  # data order, augmentation and parameter init
    checkpoint_period: int = 500  # iterations between checkpoints (the last iteration always writes one)
    log_period: int = 20  # iterations between progress lines / metrics.jsonl entries
    num_workers: int = 0  # data-loading processes per training process (0: load in the training process)
    aspect_ratio_grouping: bool = True  # batch landscape and portrait images separately (less padding), as detectron2

    def validate(self) -> "TrainConfig":
        if self.max_iter < 1 or self.batch_size < 1:
            raise ValueError(f"max_iter and batch_size must be >= 1, got {self.max_iter}, {self.batch_size}")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be positive, got {self.base_lr}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be increasing, got {self.steps}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["steps"] = tuple(d.get("steps", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------ solver recipes by model preset
def coco_schedule() -> TrainConfig:
    """OPMask's COCO recipe (the paper and its official code): batch 16, LR 0.02, linear warm-up over 1000 iterations
    from 0.001x, 130k iterations with a x0.1 step at 120k, clipping by value at 1.0, weight decay 1e-4, none on norms."""
    return TrainConfig(max_iter=130_000, batch_size=16, base_lr=0.02, warmup_iters=1000, warmup_factor=0.001,
                       steps=(120_000,), gamma=0.1, clip_value=1.0, weight_decay=1e-4, weight_decay_norm=0.0,
                       checkpoint_period=5000)


def tiny_schedule() -> TrainConfig:
    """The embedded synthetic dataset on a CPU: 800 iterations of 4 images (the `TrainConfig` defaults)."""
    return TrainConfig()


# Keyed by the model preset names of `opmask_fast.config.PRESETS`: the schedule travels with the model it was tuned for
# (every COCO preset trains the paper's schedule, the tiny ones theirs).
SOLVER_PRESETS = {name: coco_schedule if name.endswith("_coco") else tiny_schedule for name in PRESETS}


def get_solver_preset(name: str) -> TrainConfig:
    """A fresh `TrainConfig` with the schedule of model preset `name`."""
    if name not in SOLVER_PRESETS:
        raise KeyError(f"no solver recipe for preset {name!r}; known: {', '.join(sorted(SOLVER_PRESETS))}")
    return SOLVER_PRESETS[name]()


def scaled_lr(preset: TrainConfig, batch_size: int) -> float:
    """The linear scaling rule: the preset's base LR times ``batch_size / preset.batch_size``."""
    return preset.base_lr * batch_size / preset.batch_size


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; norm-layer parameters get ``weight_decay_norm`` (modules whose class name ends in "Norm" or
    "BatchNorm2d", e.g. a frozen BN with trainable parameters, count as norms too)."""
    norm_params, other = [], []
    seen = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORMS) or type(module).__name__.lower().endswith(("norm", "norm2d"))
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm_params if is_norm else other).append(p)
    groups = [{"params": other, "weight_decay": cfg.weight_decay}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": cfg.weight_decay_norm})
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Multiplier of ``base_lr`` at ``iteration``: linear warm-up, then ``gamma`` per passed step."""
    factor = cfg.gamma ** sum(1 for s in cfg.steps if iteration >= s)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule; its ``last_epoch`` is the iteration count, saved and restored with checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
