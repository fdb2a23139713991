from .anchors import AnchorGenerator
from .rpn import RPN

__all__ = ["AnchorGenerator", "RPN"]
