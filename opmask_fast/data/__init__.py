"""Data: COCO-format datasets with partial mask supervision, transforms, batching, the synthetic datasets."""

from .coco import CocoInstances, decode_segmentation, load_coco
from .datasets import train_dataset, val_dataset
from .loader import (GroupedBatchSampler, InferenceSampler, TrainingSampler, aspect_ratio_groups, collate,
                     default_num_workers, inference_loader, train_loader)
from .splits import NAMED_SPLITS, VOC_CATEGORY_IDS, is_coco_categories, resolve_split
from .synthetic import DATASETS, STRONG_CLASSES, WEAK_CLASSES, SyntheticSpec, dataset_spec, ensure_synthetic
from .transforms import ResizeFlip, hflip, resize, resized_shape

__all__ = [
    "CocoInstances", "decode_segmentation", "load_coco", "train_dataset", "val_dataset", "GroupedBatchSampler",
    "InferenceSampler", "TrainingSampler", "aspect_ratio_groups", "collate", "default_num_workers", "inference_loader",
    "train_loader", "NAMED_SPLITS", "VOC_CATEGORY_IDS", "is_coco_categories", "resolve_split", "DATASETS",
    "STRONG_CLASSES", "WEAK_CLASSES", "SyntheticSpec", "dataset_spec", "ensure_synthetic", "ResizeFlip", "hflip",
    "resize", "resized_shape",
]
