"""Model configuration: plain dataclasses (`model`), named presets (`presets`) and command-line overrides
(`overrides`).

A preset is a function returning a fresh `ModelConfig`; `get_preset(name)` looks one up by name,
`apply_override(cfg, "KEY=VALUE")` changes one field, and `opmask_fast.modeling.build_model(cfg)` turns a config into a
model.
"""

from .model import (IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, MSRA_BGR_MEAN, MSRA_BGR_STD, PRIOR_CAMS, PRIOR_CONVS,
                    PRIOR_GRAD_ROIS, PRIOR_RESOLUTIONS, WEAK_MASK_LOSSES, BackboneConfig, InputConfig, ModelConfig,
                    PriorScale, RoIHeadsConfig, RPNConfig)
from .overrides import apply_override
from .presets import PRESETS, get_preset, with_msra_weights, with_torchvision_weights

__all__ = [
    "IMAGENET_RGB_MEAN", "IMAGENET_RGB_STD", "MSRA_BGR_MEAN", "MSRA_BGR_STD", "PRIOR_CAMS", "PRIOR_CONVS",
    "PRIOR_GRAD_ROIS", "PRIOR_RESOLUTIONS", "WEAK_MASK_LOSSES", "BackboneConfig", "InputConfig", "ModelConfig",
    "PriorScale", "RoIHeadsConfig", "RPNConfig", "apply_override", "PRESETS", "get_preset", "with_msra_weights",
    "with_torchvision_weights",
]
