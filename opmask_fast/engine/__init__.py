"""Training loop, checkpoints, distributed set-up and evaluation."""

from .checkpoint import load_checkpoint, save_atomic
from .distributed import DistInfo, init_distributed
from .evaluation import METRIC_KEYS, compute_metrics, evaluate_model, format_table, oracle_ious, run_inference
from .solver import TrainConfig, build_optimizer, build_scheduler, lr_factor
from .trainer import CHECKPOINT_NAME, train

__all__ = [
    "load_checkpoint", "save_atomic", "DistInfo", "init_distributed", "METRIC_KEYS", "compute_metrics",
    "evaluate_model", "format_table", "oracle_ious", "run_inference", "TrainConfig", "build_optimizer",
    "build_scheduler", "lr_factor", "CHECKPOINT_NAME", "train",
]
