"""`ModelConfig` and its sections: plain dataclasses with one line of reason per field, and `validate`.

Every default follows detectron2's Mask R-CNN R50-FPN recipe and OPMask's official code (docs/model.md).

The prior's options, and why each is here:
- `use_prior`: False is the Mask R-CNN baseline (the same code path without the prior).
- `prior_scale`: the prior's weight (`opmask_fast.ops.prior_weight`); "feature_std" is the lite preset's recipe, "none"
  the paper's.
- `prior_impl`: which fused op adds a fixed-weight prior (RoIAlign's output write or the separate op); same maths.
- Study switches, kept because docs/study.md's tables reproduce with them (`opmask_fast.variants`):
  `prior_feature_norm`, `prior_cam`, `prior_every_conv`, `prior_grad_scale`, `prior_grad_rois`, `prior_gain_init`,
  `prior_resolution`, `prior_convs`, `prior_head_width`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Union

from ..ops.prior_weight import PRIOR_SCALE_MODES

# Pixel statistics of the two weight formats the backbone loader accepts.
MSRA_BGR_MEAN = (103.530, 116.280, 123.675)  # detectron2 / MSRA caffe weights: BGR, std 1
MSRA_BGR_STD = (1.0, 1.0, 1.0)
IMAGENET_RGB_MEAN = (123.675, 116.280, 103.530)  # torchvision weights: RGB, ImageNet std
IMAGENET_RGB_STD = (58.395, 57.120, 57.375)

PriorScale = Union[str, float]  # one of PRIOR_SCALE_MODES or a fixed float gain (opmask_fast.ops.prior_weight)
PRIOR_CAMS = ("class", "class_vs_background")
PRIOR_RESOLUTIONS = ("box", "mask")
PRIOR_GRAD_ROIS = ("all", "mask_supervised")
PRIOR_CONVS = ("box_head", "residual", "separate")
WEAK_MASK_LOSSES = ("none", "box_projection", "box_projection_pairwise")


@dataclass
class BackboneConfig:
    depth: int = 50  # ResNet depth: 18/34 use basic blocks, 50/101 bottlenecks
    width: int = 64  # channels of the stem and res2, doubled per stage; 64 is every published ResNet (and its weights)
    norm: str = "FrozenBN"  # FrozenBN fine-tunes pretrained weights at small batches; BN/SyncBN/GN train from scratch
    freeze_at: int = 2  # 0 trains everything, 1 freezes the stem, 2 the stem + res2 (detectron2), up to 5
    stride_in_1x1: bool = True  # MSRA/detectron2 weights put the stride in the 1x1 conv, torchvision's in the 3x3
    fpn_channels: int = 256  # width of P2-P6 and of every RoI feature
    # a local file with ImageNet weights (torchvision .pth or detectron2 .pkl); never downloaded
    weights: str | None = None


@dataclass
class RPNConfig:
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per level P2..P6
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width of the anchors at every location
    iou_thresholds: tuple[float, float] = (0.3, 0.7)  # below: background, between: ignored, above: foreground
    batch_size_per_image: int = 256  # anchors sampled per image for the RPN losses
    positive_fraction: float = 0.5  # at most half of them foreground
    pre_nms_topk_train: int = 2000  # proposals kept per level before NMS (training)
    pre_nms_topk_test: int = 1000  # ... at inference
    post_nms_topk_train: int = 1000  # proposals kept per image after NMS (training)
    post_nms_topk_test: int = 1000  # ... at inference
    nms_thresh: float = 0.7  # per-level NMS IoU threshold
    min_box_size: float = 0.0  # proposals with a side <= this are dropped (0: only empty boxes)
    smooth_l1_beta: float = 0.0  # 0 gives the L1 box loss detectron2 uses


@dataclass
class RoIHeadsConfig:
    batch_size_per_image: int = 512  # RoIs sampled per image for the box losses
    positive_fraction: float = 0.25  # at most a quarter of them foreground
    iou_threshold: float = 0.5  # proposal-GT IoU that makes a RoI foreground
    proposal_append_gt: bool = True  # GT boxes join the proposals so every GT has a perfect RoI
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # (wx, wy, ww, wh) of the box coder
    box_pooler_resolution: int = 7  # RoIAlign output of the box head; also the prior's resolution
    mask_pooler_resolution: int = 14  # RoIAlign output of the mask head
    pooler_sampling_ratio: int = 0  # 0: adaptive ceil(roi_size / output_size) samples per bin
    box_head_conv_dims: tuple[int, ...] = (512, 1024, 1024, 1024)  # OPMask's 4-conv box head; the CAM needs a conv map
    box_head_norm: str = "BN"  # norm after each box-head conv ("BN", "SyncBN", "GN", "FrozenBN" or "" for none)
    mask_head_conv_dim: int = 256  # channels of the class-agnostic mask head
    mask_head_num_convs: int = 7  # seven 3x3 convs give a receptive field spanning the whole 14x14 RoI
    mask_head_norm: str = "BN"  # BatchNorm in the mask head, as in OPMask and its baseline
    # True runs the mask head only on RoIs with masks (faster, BN stats differ)
    mask_head_on_supervised_only: bool = False
    # "box_projection": box-only RoIs train the mask head through their box's x/y extent; "box_projection_pairwise":
    # also BoxInst's pairwise term (neighbouring RoI cells of similar colour take the same label)
    weak_mask_loss: str = "none"
    # The pairwise term's weight ramps linearly from 0 to 1 over this many training steps (BoxInst: 10k of its 90k
    # iterations); 0 applies it fully from the start.
    pairwise_warmup_iters: int = 0
    smooth_l1_beta: float = 0.0  # 0 gives the L1 box loss detectron2 uses
    score_thresh: float = 0.05  # detections below this score are dropped at inference
    nms_thresh: float = 0.5  # per-class NMS IoU threshold at inference
    detections_per_image: int = 100  # top-k detections kept per image
    mask_threshold: float = 0.5  # probability at which pasted masks become foreground


@dataclass
class InputConfig:
    # Read by the data pipeline: the preset keeps image scale next to the anchors that must fit it.
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)  # short side drawn per training image
    min_size_test: int = 800  # short side at inference
    max_size: int = 1333  # cap on the long side
    random_flip: bool = True  # horizontal flip at training time


@dataclass
class ModelConfig:
    num_classes: int = 80  # K foreground classes; the classifier has K + 1 outputs, background last
    use_prior: bool = True  # False is the Mask R-CNN baseline: same code path without the prior added
    # How the [0, 1] prior is weighted against the RoI mask features: "none" (the paper: added as is), "learnable" (one
    # learned gain), a fixed float, or per RoI from the RoI's own features, no constant to tune: "feature_std" (the
    # prior gets the features' standard deviation), "feature_range" (the prior spans the features' min-max range).
    prior_scale: PriorScale = "none"
    prior_feature_norm: bool = False  # standardise each RoI's mask features (no parameters) before the prior is added
    prior_cam: str = "class"  # "class": the RoI class's classifier row (paper); "class_vs_background": minus the bg row
    prior_every_conv: bool = False  # also add the (weighted) prior to the input of every later mask-head conv
    # "box": the CAM of the RoI's 7x7 box-head map, resized to the mask features (paper); "mask": the CAM of the box
    # head's convs run on the mask's own 14x14 RoI features, so the prior has the mask head's resolution
    prior_resolution: str = "box"
    prior_grad_scale: float | None = None  # gradient reaching the box head through the prior; None: the forward gain
    # Whose mask losses reach the box head through the prior: "all" RoIs, or "mask_supervised" ones only (the weak
    # classes' box-supervised terms then train the mask head alone, as in the paper no weak-class loss reaches it)
    prior_grad_rois: str = "all"
    # With prior_resolution="mask", whose convs the prior's pass runs and its gradient trains: the "box_head"'s; the box
    # convs plus zero-initialised "residual"s of their weights, the only thing the prior's gradient trains; or a
    # "separate" head of the box head's shape (convs and classifier) that classifies the mask RoIs at the mask
    # resolution, trained by that loss and the prior's gradient. The last two leave the box head and the features it
    # reads to detection.
    prior_convs: str = "box_head"
    # The separate prior head's conv width (as many convs as the box head); 0: the box head's own widths. Its convs
    # run on every mask RoI at 14x14, four times the box head's 7x7 cells: a narrower head keeps it cheap.
    prior_head_width: int = 0
    # the learnable gain's start; None: std(mask features) / std(prior) of the first batch
    prior_gain_init: float | None = None
    # "roi_align": the prior fused into RoIAlign's output; "object_prior_add": the separate op
    prior_impl: str = "roi_align"
    pixel_mean: tuple[float, float, float] = MSRA_BGR_MEAN  # subtracted from the image (in input_format order)
    pixel_std: tuple[float, float, float] = MSRA_BGR_STD  # divides the image after the mean
    input_format: str = "BGR"  # channel order the backbone weights expect; images arrive RGB
    size_divisibility: int = 32  # batch padding so every FPN level halves exactly
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def validate(self) -> "ModelConfig":
        """Raise ValueError on an inconsistent config; returns self so presets can chain it."""
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.backbone.depth not in (18, 34, 50, 101):
            raise ValueError(f"backbone.depth must be 18, 34, 50 or 101, got {self.backbone.depth}")
        if self.backbone.width < 1:
            raise ValueError(f"backbone.width must be >= 1, got {self.backbone.width}")
        if not 0 <= self.backbone.freeze_at <= 5:
            raise ValueError(f"backbone.freeze_at must be in 0..5, got {self.backbone.freeze_at}")
        if isinstance(self.prior_scale, str) and self.prior_scale not in PRIOR_SCALE_MODES:
            raise ValueError(f"prior_scale must be one of {', '.join(PRIOR_SCALE_MODES)} or a number, "
                             f"got {self.prior_scale!r}")
        if self.prior_grad_scale is not None and not (isinstance(self.prior_grad_scale, (int, float))
                                                      and math.isfinite(self.prior_grad_scale)):
            raise ValueError(f"prior_grad_scale must be None or a finite number, got {self.prior_grad_scale!r}")
        if self.prior_impl not in ("roi_align", "object_prior_add"):
            raise ValueError(f"prior_impl must be 'roi_align' or 'object_prior_add', got {self.prior_impl!r}")
        if self.prior_cam not in PRIOR_CAMS:
            raise ValueError(f"prior_cam must be one of {', '.join(PRIOR_CAMS)}, got {self.prior_cam!r}")
        if self.prior_resolution not in PRIOR_RESOLUTIONS:
            raise ValueError(f"prior_resolution must be one of {', '.join(PRIOR_RESOLUTIONS)}, "
                             f"got {self.prior_resolution!r}")
        if self.prior_grad_rois not in PRIOR_GRAD_ROIS:
            raise ValueError(f"prior_grad_rois must be one of {', '.join(PRIOR_GRAD_ROIS)}, "
                             f"got {self.prior_grad_rois!r}")
        if self.prior_convs not in PRIOR_CONVS:
            raise ValueError(f"prior_convs must be one of {', '.join(PRIOR_CONVS)}, got {self.prior_convs!r}")
        if self.prior_convs != "box_head" and not (self.use_prior and self.prior_resolution == "mask"
                                                   and self.prior_grad_scale != 0):
            raise ValueError(f"prior_convs={self.prior_convs!r} needs use_prior, prior_resolution='mask' and a prior "
                             f"that passes gradient (prior_grad_scale not 0), got use_prior={self.use_prior}, "
                             f"prior_resolution={self.prior_resolution!r}, prior_grad_scale={self.prior_grad_scale!r}")
        if self.prior_head_width < 0 or (self.prior_head_width and self.prior_convs != "separate"):
            raise ValueError(f"prior_head_width must be 0 (the box head's widths) or, with prior_convs='separate', a "
                             f"positive width; got {self.prior_head_width!r} with prior_convs={self.prior_convs!r}")
        if self.roi_heads.weak_mask_loss not in WEAK_MASK_LOSSES:
            raise ValueError(f"roi_heads.weak_mask_loss must be one of {', '.join(WEAK_MASK_LOSSES)}, "
                             f"got {self.roi_heads.weak_mask_loss!r}")
        if self.roi_heads.pairwise_warmup_iters < 0:
            raise ValueError(f"roi_heads.pairwise_warmup_iters must be >= 0, "
                             f"got {self.roi_heads.pairwise_warmup_iters}")
        if self.roi_heads.weak_mask_loss != "none" and self.roi_heads.mask_head_on_supervised_only:
            raise ValueError("roi_heads.weak_mask_loss trains the mask head on box-only RoIs, which "
                             "roi_heads.mask_head_on_supervised_only=True leaves out: set one of them")
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {self.input_format!r}")
        if not (isinstance(self.size_divisibility, int) and self.size_divisibility >= 32
                and self.size_divisibility % 32 == 0):
            # C5 has stride 32: a padded size of another multiple leaves an FPN level that does not halve exactly.
            raise ValueError(f"size_divisibility must be a positive multiple of 32, got {self.size_divisibility!r}")
        if len(self.rpn.anchor_sizes) != 5:
            raise ValueError(f"rpn.anchor_sizes needs one size per level P2..P6 (5), got {self.rpn.anchor_sizes}")
        if len(self.roi_heads.box_head_conv_dims) < 1:
            raise ValueError("roi_heads.box_head_conv_dims needs at least one conv: the prior is a CAM of a conv map")
        # Counts of zero pass through the model as empty tensors and fail far from the option that set them.
        counts = {f"rpn.{k}": getattr(self.rpn, k) for k in (
            "pre_nms_topk_train", "pre_nms_topk_test", "post_nms_topk_train", "post_nms_topk_test",
            "batch_size_per_image")}
        counts.update({f"roi_heads.{k}": getattr(self.roi_heads, k) for k in (
            "batch_size_per_image", "detections_per_image", "box_pooler_resolution", "mask_pooler_resolution")})
        counts.update({"input.min_size_test": self.input.min_size_test, "input.max_size": self.input.max_size,
                       "input.min_size_train": min(self.input.min_size_train, default=0)})
        for name, value in counts.items():
            if not value >= 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        fractions = {"rpn.positive_fraction": self.rpn.positive_fraction, "rpn.nms_thresh": self.rpn.nms_thresh,
                     "roi_heads.positive_fraction": self.roi_heads.positive_fraction,
                     "roi_heads.score_thresh": self.roi_heads.score_thresh,
                     "roi_heads.nms_thresh": self.roi_heads.nms_thresh,
                     "roi_heads.mask_threshold": self.roi_heads.mask_threshold}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of `to_dict` (lists from JSON/YAML become tuples again)."""
        d = copy.deepcopy(d)
        subs = {"backbone": BackboneConfig, "rpn": RPNConfig, "roi_heads": RoIHeadsConfig, "input": InputConfig}
        kwargs = {}
        for k, v in d.items():
            if k in subs:
                v = subs[k](**{kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()})
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        return cls(**kwargs).validate()
