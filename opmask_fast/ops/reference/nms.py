"""Pure-PyTorch greedy NMS: the test oracle and the fallback when ``opmask_fast._C`` is missing.

The greedy pass is sequential by nature, so it walks the score order in Python; each kept box suppresses all later
boxes in one vectorised IoU row, so the cost is O(kept x N) tensor work and no N x N matrix is stored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _threshold(iou_threshold: float, cdtype: torch.dtype, device: torch.device) -> float:
    """The threshold to compare IoUs of dtype ``cdtype`` with, so that the comparison is torchvision's.

    torchvision (and the C++ kernel) compare a float32 IoU with the *double* threshold on the CPU; a float32 tensor
    compared with a Python float would round the threshold to float32 instead and disagree for an IoU between the
    two (e.g. IoU = float32(0.3) > 0.3 in double, but not > float32(0.3)). For a float32 IoU r, r > t in double
    exactly when r > the largest float32 <= t, which is what this returns. On CUDA torchvision (and the CUDA kernel)
    round the threshold to the nearest float32 for every box dtype, so that is what the reference does there.
    """
    t32 = torch.tensor(iou_threshold, dtype=torch.float64).to(torch.float32)  # nearest float32 (inf beyond its range)
    if device.type == "cuda":
        return float(t32)
    if cdtype == torch.float64 or math.isnan(iou_threshold):
        return iou_threshold
    if float(t32) > iou_threshold:
        t32 = torch.nextafter(t32, torch.tensor(-math.inf))
    return float(t32)


def _iou_row(box: Tensor, boxes: Tensor, area: Tensor, areas: Tensor) -> Tensor:
    """IoU of one box Tensor[4] with boxes Tensor[M, 4]; same formula and evaluation order as the kernels."""
    w = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp(min=0)
    h = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp(min=0)
    inter = w * h
    return inter / (area + areas - inter)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    """Greedy NMS in descending score order; a box suppresses only boxes of its own category.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2).
        scores: Tensor[N].
        idxs: Tensor[N] int64 category of each box, or None for one category.
        iou_threshold: a later box is suppressed when IoU > iou_threshold.

    Returns:
        Tensor[M] int64 indices of the kept boxes, in descending score order.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # IoU in float32 at least (float16 areas overflow) and the kernels' precision for float64.
    cdtype = torch.promote_types(boxes.dtype, torch.float32)
    threshold = _threshold(iou_threshold, cdtype, boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.to(cdtype)[order]
    cls = idxs[order] if idxs is not None else None
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = torch.zeros(n, dtype=torch.bool, device=b.device)
    suppressed_host = [False] * n  # the per-box check stays on the host; only IoU rows are tensor work
    keep = []
    for i in range(n):
        if suppressed_host[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        over = _iou_row(b[i], b[i + 1 :], areas[i], areas[i + 1 :]) > threshold
        if cls is not None:
            over &= cls[i + 1 :] == cls[i]
        if bool(over.any()):
            suppressed[i + 1 :] |= over
            suppressed_host = suppressed.tolist()
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over one category; see :func:`batched_nms`."""
    return batched_nms(boxes, scores, None, iou_threshold)
