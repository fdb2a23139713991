"""Greedy non-maximum suppression (torchvision-compatible results and order)."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from opmask_fast import _extension
from opmask_fast.ops import reference
from opmask_fast.ops._tracing import fx_leaf, values_unreadable

__all__ = ["nms", "batched_nms"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> None:
    check_shapes(boxes, scores, idxs, iou_threshold)
    if boxes.shape[0] > 0 and not values_unreadable(boxes, scores):
        check_finite(boxes, scores)


def check_finite(boxes: Tensor, scores: Tensor) -> None:
    """The data check (one host sync): finite boxes, no NaN score."""
    boxes_ok, scores_ok = _finite(boxes, scores)
    if not boxes_ok:
        raise ValueError("boxes contain NaN or inf")
    if not scores_ok:
        raise ValueError("scores contain NaN")


def check_shapes(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> None:
    """Shapes, dtypes, devices and the threshold's type: no data read, so also done while tracing."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a Tensor[N, 4], got {getattr(boxes, 'shape', type(boxes))}")
    n = boxes.shape[0]
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (n,):
        raise ValueError(f"scores must be a Tensor[{n}], got {getattr(scores, 'shape', type(scores))}")
    if boxes.dtype not in _FLOAT_DTYPES or scores.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"scores are on {scores.device} but boxes are on {boxes.device}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or tuple(idxs.shape) != (n,):
            raise ValueError(f"idxs must be a Tensor[{n}], got {getattr(idxs, 'shape', type(idxs))}")
        if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
            raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
        if idxs.device != boxes.device:
            raise ValueError(f"idxs are on {idxs.device} but boxes are on {boxes.device}")
    # numbers.Real takes NumPy's scalars too (torchvision takes them); a bool is a mistake, not a threshold.
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, (bool, np.bool_)):
        raise TypeError(f"iou_threshold must be a float, got {type(iou_threshold).__name__}")


def _finite(boxes: Tensor, scores: Tensor) -> tuple[bool, bool]:
    """(all boxes finite, no NaN score) with one host sync. CPU tensors go through NumPy: single-threaded and
    without torch's parallel-region start-up, which dominates on small inputs."""
    if boxes.device.type == "cpu" and boxes.dtype in (torch.float32, torch.float64) and \
            scores.dtype in (torch.float32, torch.float64, torch.float16):
        b = boxes.detach().numpy()
        s = scores.detach().numpy()
        return bool(np.isfinite(b).all()), not bool(np.isnan(s).any())
    ok = torch.stack([torch.isfinite(boxes).all(), ~torch.isnan(scores).any()]).tolist()
    return bool(ok[0]), bool(ok[1])


@fx_leaf
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: keep the highest-scoring box, drop later boxes with IoU > iou_threshold, repeat.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2), float16/bfloat16/float32/float64 (IoU is computed in float32 or more).
        scores: Tensor[N].
        iou_threshold: boxes overlapping a kept box by IoU strictly greater than this are discarded.

    Returns:
        Tensor[M] int64 indices of the kept boxes, by descending score (ties: lower index first).
    """
    _check(boxes, scores, None, iou_threshold)
    if _extension.compiled("nms", boxes.device):
        return torch.ops.opmask_fast.nms(boxes, scores, float(iou_threshold))
    return reference.nms(boxes, scores, float(iou_threshold))


@fx_leaf
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category: boxes of different ``idxs`` never suppress each other.

    The kernels test the category inside the greedy pass, so there is no per-class loop and no coordinate-offset
    trick: results are exact for any coordinate range and for float16 boxes.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2).
        scores: Tensor[N].
        idxs: Tensor[N] integer category of each box.
        iou_threshold: IoU above which a lower-scoring box of the same category is discarded.

    Returns:
        Tensor[M] int64 indices of the kept boxes, by descending score.
    """
    _check(boxes, scores, idxs, iou_threshold)
    if _extension.compiled("batched_nms", boxes.device):
        return torch.ops.opmask_fast.batched_nms(boxes, scores, idxs.to(torch.int64), float(iou_threshold))
    return reference.batched_nms(boxes, scores, idxs, float(iou_threshold))


def _register() -> None:
    """Fake kernels: the number of kept boxes is data-dependent, so it is an unbacked symbolic size."""

    @torch.library.register_fake("opmask_fast::nms")
    def _(boxes, scores, iou_threshold):
        ctx = torch.library.get_ctx()
        return boxes.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64)

    @torch.library.register_fake("opmask_fast::batched_nms")
    def _(boxes, scores, idxs, iou_threshold):
        ctx = torch.library.get_ctx()
        return boxes.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64)


if _extension.has_C():
    _register()
