from .box_head import BoxHead
from .mask_head import MaskHead
from .prior import PriorGain
from .roi_heads import RoIHeads

__all__ = ["BoxHead", "MaskHead", "PriorGain", "RoIHeads"]
