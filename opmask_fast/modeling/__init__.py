"""The OPMask model and its Mask R-CNN baseline (see `opmask_fast.config` for configs and presets)."""

from __future__ import annotations

import warnings

from .meta_arch import OPMaskModel
from .weights import WeightsMismatchError, load_backbone_weights


def build_model(cfg) -> OPMaskModel:
    """`OPMaskModel` for a `ModelConfig` (baseline when `cfg.use_prior` is False), with `cfg.backbone.weights` loaded."""
    model = OPMaskModel(cfg=cfg)
    if cfg.backbone.weights:
        model.load_backbone_weights(cfg.backbone.weights)
    elif cfg.backbone.norm == "FrozenBN":
        warnings.warn("the backbone uses FrozenBN but cfg.backbone.weights is not set: the ResNet keeps a random "
                      "initialisation with identity norms (fine for tests and timing; to train from scratch use "
                      "backbone.norm='BN' or 'GN')", stacklevel=2)
    return model


__all__ = ["OPMaskModel", "build_model", "load_backbone_weights", "WeightsMismatchError"]
