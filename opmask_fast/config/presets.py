"""Named presets: each a function returning a fresh, validated `ModelConfig`; `get_preset(name)` looks one up, and
`with_torchvision_weights` / `with_msra_weights` set a config up for a local backbone weight file."""

from __future__ import annotations

import copy
from typing import Callable

from .model import (IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, MSRA_BGR_MEAN, MSRA_BGR_STD, BackboneConfig, InputConfig,
                    ModelConfig, RoIHeadsConfig, RPNConfig)


def _coco(depth: int, use_prior: bool) -> ModelConfig:
    # ImageNet weights from MSRA/detectron2 (R-50.pkl / R-101.pkl): BGR, std 1, stride in the 1x1 conv.
    # The paper's recipe (prior added as is, no box term): the lite preset's recipe was chosen on the synthetic CPU
    # datasets only, and the paper reports its own recipe working at COCO scale.
    return ModelConfig(num_classes=80, use_prior=use_prior, backbone=BackboneConfig(depth=depth)).validate()


def opmask_r50_coco() -> ModelConfig:
    return _coco(50, True)


def baseline_r50_coco() -> ModelConfig:
    return _coco(50, False)


def opmask_r101_coco() -> ModelConfig:
    return _coco(101, True)


def baseline_r101_coco() -> ModelConfig:
    return _coco(101, False)


def _tiny(use_prior: bool) -> ModelConfig:
    # ResNet-18 FPN trained from scratch on the synthetic shapes (128-256 px images, 6 classes) on a CPU: trainable
    # BatchNorm, nothing frozen, narrow heads, anchors one octave smaller, fewer proposals and RoIs.
    return ModelConfig(
        num_classes=6,
        use_prior=use_prior,
        pixel_mean=IMAGENET_RGB_MEAN,
        pixel_std=IMAGENET_RGB_STD,
        input_format="RGB",
        backbone=BackboneConfig(depth=18, norm="BN", freeze_at=0, stride_in_1x1=False, fpn_channels=64),
        rpn=RPNConfig(
            anchor_sizes=(16, 32, 64, 128, 256),
            pre_nms_topk_train=1000,
            pre_nms_topk_test=500,
            post_nms_topk_train=500,
            post_nms_topk_test=300,
        ),
        roi_heads=RoIHeadsConfig(
            batch_size_per_image=64,
            box_head_conv_dims=(64, 64, 128, 128),
            mask_head_conv_dim=32,
        ),
        input=InputConfig(min_size_train=(128,), min_size_test=128, max_size=256),
    ).validate()


def opmask_r18_tiny() -> ModelConfig:
    return _tiny(True)


def baseline_r18_tiny() -> ModelConfig:
    return _tiny(False)


def _lite(use_prior: bool) -> ModelConfig:
    # The main job's model: the tiny preset at half the CPU per training step, for the main job's 15-minute budget on
    # slow 2-core machines. Half the trunk's channels (32 wide: no ImageNet weights fit it, it trains from
    # scratch anyway), a 64-wide box head (the 4 box convs on every sampled RoI were the largest cost) and 32 RoIs per
    # image at half foreground: the box head sees half the RoIs, the mask head as many foreground RoIs as before.
    # Four mask-head convs instead of OPMask's seven (Mask R-CNN's depth): 3-9% less per step, and in 800 iterations
    # from scratch the shallower head did better (README: +1.4 strong mask AP for the baseline, +0.9 weak for OPMask).
    cfg = _tiny(use_prior)
    cfg.backbone.width = 32
    cfg.roi_heads.box_head_conv_dims = (64, 64, 64, 64)
    cfg.roi_heads.batch_size_per_image = 32
    cfg.roi_heads.positive_fraction = 0.5
    cfg.roi_heads.mask_head_num_convs = 4
    # 100 proposals per image at inference, not 300: the box head over every proposal was most of an image's
    # inference; these images hold 2-16 objects. Same checkpoints, both ways: 1.5-1.9x less per image, mask AP equal
    # or higher on the embedded set, within the seeds' spread on shapes2 (benchmarks/RESULTS.md).
    cfg.rpn.post_nms_topk_test = 100
    return cfg.validate()


def opmask_r18_lite() -> ModelConfig:
    # The recommended recipe at this scale (docs/study.md): the prior at the mask head's resolution, the CAM of a
    # 16-wide prior head of its own over each mask RoI's 14x14 features (it classifies the mask RoIs; the
    # mask-supervised RoIs' mask losses train it through its CAM, and the box head stays detection's), weighted per RoI
    # by its mask features' std, and box-only RoIs training the mask head alone through BoxInst's projection term
    # (through the prior it would teach the CAM to fill the box, concave gaps included).
    cfg = _lite(True)
    cfg.prior_scale = "feature_std"
    cfg.prior_resolution = "mask"
    cfg.prior_convs = "separate"
    cfg.prior_head_width = 16
    cfg.prior_grad_rois = "mask_supervised"
    cfg.roi_heads.weak_mask_loss = "box_projection"
    return cfg.validate()


def opmask_r18_lite_paper() -> ModelConfig:
    # The paper's recipe on the lite model: the prior added as is, box-only RoIs give the mask head nothing.
    return _lite(True)


def baseline_r18_lite() -> ModelConfig:
    return _lite(False)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "opmask_r50_coco": opmask_r50_coco,
    "baseline_r50_coco": baseline_r50_coco,
    "opmask_r101_coco": opmask_r101_coco,
    "baseline_r101_coco": baseline_r101_coco,
    "opmask_r18_tiny": opmask_r18_tiny,
    "baseline_r18_tiny": baseline_r18_tiny,
    "opmask_r18_lite": opmask_r18_lite,
    "opmask_r18_lite_paper": opmask_r18_lite_paper,
    "baseline_r18_lite": baseline_r18_lite,
}


def get_preset(name: str) -> ModelConfig:
    """A fresh `ModelConfig` for a preset name (see `PRESETS`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def with_torchvision_weights(cfg: ModelConfig, path: str) -> ModelConfig:
    """Copy of `cfg` set up for a torchvision ResNet state dict: RGB ImageNet statistics, stride in the 3x3 conv."""
    return _with_backbone_weights(cfg, path, stride_in_1x1=False, mean=IMAGENET_RGB_MEAN, std=IMAGENET_RGB_STD,
                                  input_format="RGB")


def with_msra_weights(cfg: ModelConfig, path: str) -> ModelConfig:
    """Copy of `cfg` set up for MSRA / detectron2 ResNet weights (R-50.pkl): BGR, std 1, stride in the 1x1 conv."""
    return _with_backbone_weights(cfg, path, stride_in_1x1=True, mean=MSRA_BGR_MEAN, std=MSRA_BGR_STD,
                                  input_format="BGR")


def _with_backbone_weights(cfg: ModelConfig, path: str, *, stride_in_1x1: bool, mean, std,
                           input_format: str) -> ModelConfig:
    cfg = copy.deepcopy(cfg)
    cfg.backbone.weights, cfg.backbone.stride_in_1x1 = path, stride_in_1x1
    cfg.pixel_mean, cfg.pixel_std, cfg.input_format = mean, std, input_format
    return cfg.validate()
