"""The training and evaluation datasets a model config's ``input`` section asks for (image sizes, flips)."""

from __future__ import annotations

from .coco import CocoInstances
from .transforms import ResizeFlip


def train_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    """``paths["train_ann"]``/``["train_images"]`` with masks of the strong classes only, images without a usable
    annotation dropped, each image resized (a short side drawn from ``input_cfg.min_size_train``) and maybe flipped."""
    transform = ResizeFlip(short_sides=input_cfg.min_size_train, max_side=input_cfg.max_size,
                           flip_prob=0.5 if input_cfg.random_flip else 0.0)
    return CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split=split,
                         split_seed=split_seed, transform=transform, masks="strong", filter_empty=True, coco=coco)


def val_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    """``paths["val_ann"]``/``["val_images"]`` at the test size, ground-truth masks decoded by the evaluation itself."""
    transform = ResizeFlip(short_sides=(input_cfg.min_size_test,), max_side=input_cfg.max_size)
    return CocoInstances(ann_file=paths["val_ann"], image_dir=paths["val_images"], split=split, split_seed=split_seed,
                         transform=transform, masks="none", coco=coco)
