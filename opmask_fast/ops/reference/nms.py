"""Pure-PyTorch greedy NMS: the test oracle and the fallback when ``opmask_fast._C`` is missing.

The greedy pass is sequential by nature, so it walks the score order in Python; each kept box suppresses all later
boxes in one vectorised IoU row, so the cost is O(kept x N) tensor work and no N x N matrix is stored.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
        over = _iou_row(b[i], b[i + 1 :], areas[i], areas[i + 1 :]) > iou_threshold
        if cls is not None:
            over &= cls[i + 1 :] == cls[i]
        if bool(over.any()):
            suppressed[i + 1 :] |= over
            suppressed_host = suppressed.tolist()
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over one category; see :func:`batched_nms`."""
    return batched_nms(boxes, scores, None, iou_threshold)
