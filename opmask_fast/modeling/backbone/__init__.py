"""The backbone: a ResNet trunk (frozen or trainable norms, stride in the 1x1 or 3x3 conv) and the FPN giving P2-P6."""

from .fpn import FPN
from .resnet import ResNet

__all__ = ["FPN", "ResNet"]
