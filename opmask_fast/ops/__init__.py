"""Public ops of opmask_fast (torchvision-compatible signatures where torchvision has the op), the prior's weight,
and the swap-in module that adds the prior to other detectors. The lowest layer: imports nothing else of the package."""

from opmask_fast.ops.add_weighted_map import add_weighted_map
from opmask_fast.ops.multi_level_roi_align import multi_level_roi_align
from opmask_fast.ops.multi_scale_roi_align import multi_scale_roi_align
from opmask_fast.ops.nms import batched_nms, nms
from opmask_fast.ops.nms_topk import nms_topk
from opmask_fast.ops.object_mask_prior import ObjectMaskPrior
from opmask_fast.ops.object_prior import object_prior
from opmask_fast.ops.object_prior_add import object_prior_add
from opmask_fast.ops.prior_weight import PRIOR_SCALE_MODES, PriorWeight, parse_prior_scale
from opmask_fast.ops.roi_align import roi_align

__all__ = [
    "roi_align",
    "add_weighted_map",
    "multi_scale_roi_align",
    "multi_level_roi_align",
    "nms",
    "batched_nms",
    "nms_topk",
    "object_prior_add",
    "object_prior",
    "ObjectMaskPrior",
    "PriorWeight",
    "PRIOR_SCALE_MODES",
    "parse_prior_scale",
]
