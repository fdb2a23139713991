"""The RoI heads: proposal sampling, the box head (convs + GAP, the CAM's source), the object prior's test-time
probes, the class-agnostic mask head and its losses, inference."""

from .box_head import BoxHead
from .mask_head import MaskHead
from .prior import PriorTap
from .roi_heads import RoIHeads

__all__ = ["BoxHead", "MaskHead", "PriorTap", "RoIHeads"]
