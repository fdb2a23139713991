"""The whole detector: backbone -> RPN -> RoI heads, losses in training, detections with pasted masks and priors."""

from .opmask import OPMaskModel
from .static_inference import StaticInference

__all__ = ["OPMaskModel", "StaticInference"]
