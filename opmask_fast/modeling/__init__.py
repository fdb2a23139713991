"""The OPMask model and its Mask R-CNN baseline (see `opmask_fast.config` for configs and presets)."""

from __future__ import annotations

from .meta_arch import OPMaskModel
from .weights import WeightsMismatchError, load_backbone_weights


def build_model(cfg) -> OPMaskModel:
    """`OPMaskModel` for a `ModelConfig` (baseline when `cfg.use_prior` is False), with `cfg.backbone.weights` loaded."""
    model = OPMaskModel(cfg=cfg)
    if cfg.backbone.weights:
        model.load_backbone_weights(cfg.backbone.weights)
    return model


__all__ = ["OPMaskModel", "build_model", "load_backbone_weights", "WeightsMismatchError"]
