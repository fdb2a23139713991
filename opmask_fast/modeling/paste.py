"""Paste per-detection mask probabilities (M x 28 x 28) into the image, all detections at once.

detectron2 pastes with `grid_sample` (bilinear, zero padding, align_corners=False) over a grid built from each box. That
sampling is separable: the value at pixel (y, x) is  sum_ij Wy[y, i] P[i, j] Wx[x, j]  with hat weights
W[t, i] = max(0, 1 - |s(t) - i|), where s(t) = (t + 0.5 - x1) / (x2 - x1) * S - 0.5 is the pixel centre in mask cells.
So a whole batch is two batched matmuls, (Wy @ P) @ Wx^T, without an (M, H, W, 2) grid or a per-instance loop.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def _hat_weights(start: Tensor, end: Tensor, length: int, cells: int) -> Tensor:
    """`Tensor[M]` box starts / ends on one axis -> `Tensor[M, length, cells]` bilinear weights of each pixel."""
    t = torch.arange(length, device=start.device, dtype=torch.float32) + 0.5
    extent = (end - start).clamp(min=1e-6)
    s = (t[None, :] - start[:, None]) / extent[:, None] * cells - 0.5  # (M, length)
    i = torch.arange(cells, device=start.device, dtype=torch.float32)
    return (1.0 - (s[:, :, None] - i).abs()).clamp(min=0.0)


def paste_mask_probs(mask_probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Soft paste: `Tensor[M, S, S]` probabilities, `Tensor[M, 4]` xyxy boxes in the target image -> `Tensor[M, H, W]`
    float32 (what detectron2's grid_sample paste gives, up to float rounding)."""
    if mask_probs.dim() != 3 or boxes.shape != (mask_probs.shape[0], 4):
        raise ValueError(f"need mask_probs Tensor[M, S, S] and boxes Tensor[M, 4], got {tuple(mask_probs.shape)} and "
                         f"{tuple(boxes.shape)}")
    probs, boxes = mask_probs.float(), boxes.float()
    # float32 under autocast too: it would run the matmuls in bfloat16, moving pixels across the threshold (meta
    # tensors, for shapes, have no autocast to turn off).
    device = probs.device.type
    with torch.autocast(device_type=device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext():
        wy = _hat_weights(boxes[:, 1], boxes[:, 3], height, probs.shape[1])  # (M, H, S)
        wx = _hat_weights(boxes[:, 0], boxes[:, 2], width, probs.shape[2])  # (M, W, S)
        return torch.bmm(torch.bmm(wy, probs), wx.transpose(1, 2))


def paste_masks(mask_probs: Tensor, boxes: Tensor, height: int, width: int, *, threshold: float = 0.5,
                chunk_bytes: int = 1 << 27, chunk: int | None = None) -> Tensor:
    """Hard paste: -> `Tensor[M, H, W]` bool, foreground where the pasted probability >= threshold.

    Detections are processed in chunks so the float32 intermediate stays under `chunk_bytes` (128 MiB) on large images;
    `chunk` fixes the detections per step instead (a step count that does not depend on the image size: traceable
    with a dynamic size).
    """
    m = mask_probs.shape[0]
    out = torch.empty((m, height, width), dtype=torch.bool, device=mask_probs.device)
    if m == 0:
        return out
    step = chunk or max(1, chunk_bytes // max(1, 4 * height * width))
    for s in range(0, m, step):
        out[s:s + step] = paste_mask_probs(mask_probs[s:s + step], boxes[s:s + step], height, width) >= threshold
    return out
