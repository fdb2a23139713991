"""Plain PyTorch references of the compiled ops (CPU fallback and test oracle; run them in float64 for tests)."""

from .multi_level_roi_align import multi_level_roi_align
from .nms import batched_nms, nms
from .roi_align import MAP_WEIGHTS, add_weighted_map, map_gain, roi_align

__all__ = ["roi_align", "map_gain", "add_weighted_map", "MAP_WEIGHTS", "multi_level_roi_align", "nms", "batched_nms"]
