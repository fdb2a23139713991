"""Box helpers on `Tensor[N, 4]` xyxy boxes (pixel coordinates, continuous: a box covers [x1, x2) x [y1, y2))."""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """`Tensor[N, 4]` -> `Tensor[N]`."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every pair: `Tensor[N, 4]`, `Tensor[M, 4]` -> `Tensor[N, M]` (0 where the union is empty)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip `Tensor[..., 4]` boxes to the image [0, width] x [0, height] (out of place)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """`Tensor[N]` bool: both sides longer than `threshold`."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
