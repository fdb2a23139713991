"""Training: the loop (`trainer`), solver recipes and schedules, checkpoints and the model rebuilt from one, initial
weights (`--weights`), torch.distributed set-up, progress and the metrics log, host-memory settings of CPU runs."""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_atomic
from .distributed import DistInfo, init_distributed
from .solver import TrainConfig, build_optimizer, build_scheduler, lr_factor
from .trainer import CHECKPOINT_NAME, train

__all__ = [
    "CheckpointError", "load_checkpoint", "model_from_checkpoint", "save_atomic", "DistInfo", "init_distributed",
    "TrainConfig", "build_optimizer", "build_scheduler", "lr_factor", "CHECKPOINT_NAME", "train",
]
