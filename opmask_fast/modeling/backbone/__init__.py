from .fpn import FPN
from .resnet import ResNet

__all__ = ["FPN", "ResNet"]
