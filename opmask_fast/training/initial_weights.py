"""Initial weights for training (``--weights FILE``): ImageNet backbone weights or a whole model, chosen by the file.

The decision comes before the model is built, because backbone weights fix the pixel format the model must use: torchvision
ResNets were trained on RGB images normalised by the ImageNet mean and std with the stride in the 3x3 conv, MSRA /
detectron2 ones on BGR images with std 1 and the stride in the 1x1 conv. Nothing in the tensors says which, so the file's
naming scheme (and a detectron2 pickle's ``__author__``) decides.
"""

from __future__ import annotations

import logging
import warnings

import torch

from ..config import ModelConfig, with_msra_weights, with_torchvision_weights
from ..modeling import build_model
from ..modeling.backbone import ResNet
from ..modeling.weights import (WeightsFile, WeightsMismatchError, check_backbone_weights, check_state,
                               inspect_weights_file, load_model_state, read_model_state)

logger = logging.getLogger(__name__)

_PIXEL_FIELDS = ("pixel_mean", "pixel_std", "input_format")


def configure_weights(cfg: ModelConfig, path: str) -> tuple[ModelConfig, WeightsFile]:
    """A copy of ``cfg`` ready for the weights in ``path``, and what the file holds.

    A backbone file sets ``cfg.backbone.weights`` and the pixel format / stride placement its weights were trained
    with, and is checked against a ResNet of ``cfg.backbone.depth`` right away (no weights are copied yet). A whole
    model (a checkpoint of ``opmask_fast.train``) keeps the pixel format and stride placement it was trained with.

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file.
        WeightsMismatchError: a file that is neither kind, or backbone weights of another ResNet (every key listed).
    """
    wf = inspect_weights_file(path)
    if wf.kind == "backbone":
        cfg = (with_torchvision_weights if wf.pixel_format == "torchvision" else with_msra_weights)(cfg, path)
        _check_backbone(cfg, path)
        logger.info("weights: %s is a %s ResNet backbone file: %s images, stride in the %s conv", path, wf.format,
                    cfg.input_format, "1x1" if cfg.backbone.stride_in_1x1 else "3x3")
        return cfg, wf
    cfg = ModelConfig.from_dict(cfg.to_dict())
    cfg.backbone.weights = None  # every backbone weight comes from the file
    if wf.model_config:
        for name in _PIXEL_FIELDS:
            setattr(cfg, name, tuple(wf.model_config[name]) if name != "input_format" else wf.model_config[name])
        cfg.backbone.stride_in_1x1 = wf.model_config["backbone"]["stride_in_1x1"]
    logger.info("weights: %s holds a whole model (%s)", path, wf.format)
    return cfg.validate(), wf


def _check_backbone(cfg: ModelConfig, path: str) -> None:
    bc = cfg.backbone
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        target = ResNet(depth=bc.depth, norm=bc.norm, freeze_at=bc.freeze_at, stride_in_1x1=bc.stride_in_1x1,
                        width=bc.width)
    try:
        check_backbone_weights(target, path)
    except WeightsMismatchError as e:
        if bc.width != 64:  # every published ResNet is 64 wide: say that first, the key-by-key list is only noise
            raise WeightsMismatchError(
                f"the model's ResNet-{bc.depth} is {bc.width} channels wide and published weights are 64 wide: "
                f"--set backbone.width=64, or a 64-wide preset such as opmask_r18_tiny for the CPU model ({e})") from None
        raise WeightsMismatchError(f"{e}\n  (the model's backbone is a ResNet-{bc.depth}: backbone.depth)") from None


def check_model_weights(cfg: ModelConfig, state: dict, *, source: str) -> None:
    """Whether a whole model's weights ``state`` fit the model ``cfg`` builds, before any work: the model is built on
    the meta device (shapes only, nothing allocated).

    Raises:
        WeightsMismatchError: every missing, unexpected or mis-shaped key, naming ``source``.
    """
    cfg = ModelConfig.from_dict(cfg.to_dict())
    cfg.backbone.weights = None  # the state replaces every weight: no backbone file is read
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.filterwarnings("ignore", message=".*FrozenBN but cfg.backbone.weights is not set")
        target = build_model(cfg).state_dict()
    check_state(state, target, what=f"model weights in {source}")


def build_with_weights(cfg: ModelConfig, weights: WeightsFile | None = None, *, state: dict | None = None,
                       source: str = "the checkpoint"):
    """``build_model(cfg)``, then a whole model's weights copied in: ``state`` when given (already read from
    ``source``), else the file ``weights`` names. Backbone files load inside ``build_model`` (``cfg.backbone.weights``).
    """
    if state is None and (weights is None or weights.kind == "backbone"):
        return build_model(cfg)
    with warnings.catch_warnings():  # the random-backbone warning does not apply: the file replaces every weight
        warnings.filterwarnings("ignore", message=".*FrozenBN but cfg.backbone.weights is not set")
        model = build_model(cfg)
    source = repr(weights.path) if state is None else source
    load_model_state(model, read_model_state(weights.path) if state is None else state, source=source)
    return model
