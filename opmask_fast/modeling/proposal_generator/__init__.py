"""The region proposal network: anchors per FPN level, their matching and sampling, top-k and NMS per level."""

from .anchors import AnchorGenerator
from .rpn import RPN

__all__ = ["AnchorGenerator", "RPN"]
