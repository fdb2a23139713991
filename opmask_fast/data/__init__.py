"""Data: COCO-format datasets with partial mask supervision, transforms, batching, the embedded synthetic dataset."""

from .coco import CocoInstances, decode_segmentation, load_coco
from .loader import InferenceSampler, TrainingSampler, collate, inference_loader, train_loader
from .splits import NAMED_SPLITS, VOC_CATEGORY_IDS, is_coco_categories, resolve_split
from .synthetic import STRONG_CLASSES, WEAK_CLASSES, SyntheticSpec, ensure_synthetic
from .transforms import ResizeFlip, hflip, resize, resized_shape

__all__ = [
    "CocoInstances", "decode_segmentation", "load_coco", "InferenceSampler", "TrainingSampler", "collate",
    "inference_loader", "train_loader", "NAMED_SPLITS", "VOC_CATEGORY_IDS", "is_coco_categories",
    "resolve_split", "STRONG_CLASSES",
    "WEAK_CLASSES", "SyntheticSpec", "ensure_synthetic", "ResizeFlip", "hflip", "resize", "resized_shape",
]
