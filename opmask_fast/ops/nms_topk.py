"""Fixed-size NMS for static shapes: `nms_topk`, the first `max_keep` boxes `batched_nms` keeps, padded, and a count.

The model's static inference path (`opmask_fast.modeling.meta_arch.static_inference`) needs every tensor's shape known
before the data is seen, so it cannot filter candidates or take a keep list of unknown length. Invalid candidates are
given the score -inf instead (they are never kept and suppress nothing), and the result has `max_keep` rows: the kept
indices in descending score order, then -1. On CUDA the walk over the suppression bitmask runs on the device and
stops once `max_keep` boxes are kept: nothing is read back to the host.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from opmask_fast import _extension
from opmask_fast.ops import reference
from opmask_fast.ops.nms import check_finite, check_shapes
from opmask_fast.ops.roi_align import as_int
from opmask_fast.ops._tracing import fx_leaf, values_unreadable

__all__ = ["nms_topk"]


@fx_leaf
def nms_topk(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int, idxs: Tensor | None = None, *,
             validate: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy NMS (per category when `idxs` is given) with a fixed-size result.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2); the boxes of valid candidates must be finite.
        scores: Tensor[N]; -inf (or NaN) marks a candidate that is ignored.
        iou_threshold: a box overlapping a kept box of its category by IoU strictly above this is discarded.
        max_keep: the result's length.
        idxs: Tensor[N] integer category of each box, or None (all boxes one category).
        validate: check the data (finite boxes of the valid candidates: one host sync). The model's static path
            passes False: its candidates are finite or -inf by construction.

    Returns:
        keep: Tensor[max_keep] int64, the indices `batched_nms(valid boxes)[:max_keep]` returns (descending score,
            ties: lower index first), then -1.
        count: Tensor[] int64, how many entries of `keep` are indices.
    """
    max_keep = as_int(max_keep, "max_keep")
    if max_keep < 0:
        raise ValueError(f"max_keep must be an integer >= 0, got {max_keep!r}")
    check_shapes(boxes, scores, idxs, iou_threshold)  # no data read: also with validate=False and while tracing
    if validate and not values_unreadable(boxes, scores) and boxes.shape[0] > 0:
        valid = scores > float("-inf")  # NaN too is not valid: an ignored candidate
        check_finite(boxes[valid], scores[valid])
    idxs = None if idxs is None else idxs.to(torch.int64)
    _extension.compiled("nms_topk", boxes.device)  # without _C the op is the reference, registered below
    return torch.ops.opmask_fast.nms_topk(boxes, scores, idxs, float(iou_threshold), max_keep)


def nms_topk_reference(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float,
                       max_keep: int) -> tuple[Tensor, Tensor]:
    """The plain definition: the reference NMS over the valid candidates, truncated and padded."""
    where = torch.nonzero(scores > float("-inf")).squeeze(1)
    if idxs is None:
        kept = reference.nms(boxes[where], scores[where], iou_threshold)
    else:
        kept = reference.batched_nms(boxes[where], scores[where], idxs[where], iou_threshold)
    kept = where[kept[:max_keep]]
    out = torch.full((max_keep,), -1, dtype=torch.int64, device=boxes.device)
    out[:kept.numel()] = kept
    return out, torch.tensor(kept.numel(), dtype=torch.int64, device=boxes.device)


def _fake(boxes, scores, idxs, iou_threshold, max_keep):
    return boxes.new_empty((max_keep,), dtype=torch.int64), boxes.new_empty((), dtype=torch.int64)


if _extension.has_C():
    torch.library.register_fake("opmask_fast::nms_topk")(_fake)
else:
    # Without the kernels the same op wraps the reference, opaque to tracing (its selection depends on the data), so
    # the static path exports either way.
    @torch.library.custom_op("opmask_fast::nms_topk", mutates_args=())
    def _fallback(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                  max_keep: int) -> tuple[Tensor, Tensor]:
        return nms_topk_reference(boxes, scores, idxs, iou_threshold, max_keep)

    _fallback.register_fake(_fake)
