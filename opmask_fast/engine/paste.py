"""Pasting per-box maps (mask probabilities, priors) into the image, and mask encoding for COCO results."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor


def paste_maps(maps: Tensor, boxes: Tensor, image_size: tuple[int, int], *, threshold: float | None = 0.5) -> Tensor:
    """Resamples each ``maps[i]: Tensor[Hm, Wm]`` onto its box of an image of ``image_size``.

    Args:
        maps: ``Tensor[M, Hm, Wm]`` values in [0, 1] spanning the box (bin centres at the half-pixel positions, as
            RoIAlign with ``aligned=True`` samples them).
        boxes: ``Tensor[M, 4]`` xyxy in the pixel coordinates of the output image.
        image_size: (H, W) of the output.
        threshold: ``None`` returns the resampled values (0 outside the box); else the bool mask ``value >= threshold``
            (detectron2's rule).

    Returns:
        ``Tensor[M, H, W]`` bool (or float32 when ``threshold`` is None).
    """
    h, w = image_size
    maps = maps.detach().float().cpu()
    boxes = boxes.detach().float().cpu()
    m = maps.shape[0]
    out = torch.zeros((m, h, w), dtype=torch.float32)
    valid = torch.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # All boxes of a chunk in one grid_sample over the whole image: far fewer calls than one per box, with the
    # chunk bounded so large images do not allocate huge grids.
    chunk = max(1, (1 << 22) // max(h * w, 1))
    xs = torch.arange(w, dtype=torch.float32) + 0.5  # pixel centres
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    for start in range(0, m, chunk):
        b = boxes[start:start + chunk]
        bw = (b[:, 2] - b[:, 0]).clamp(min=1e-6)
        bh = (b[:, 3] - b[:, 1]).clamp(min=1e-6)
        gx = (xs[None] - b[:, 0:1]) / bw[:, None] * 2 - 1  # [n, W]
        gy = (ys[None] - b[:, 1:2]) / bh[:, None] * 2 - 1  # [n, H]
        n = b.shape[0]
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)
        # zeros padding leaves pixels outside the box at 0 (beyond the half-bin border of the map)
        vals = F.grid_sample(maps[start:start + n, None], grid, align_corners=False, padding_mode="zeros")[:, 0]
        inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
        out[start:start + n] = torch.where(inside, vals, torch.zeros(()))
    out[~valid] = 0
    return out if threshold is None else out >= threshold


def encode_masks(masks: Tensor) -> list[dict]:
    """COCO compressed RLE (``counts`` as str, JSON-ready) of each ``masks[i]: Tensor[H, W]`` bool."""
    if masks.shape[0] == 0:
        return []
    arr = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(arr)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired masks ``a, b: Tensor[N, H, W]`` -> ``Tensor[N]`` (1 where both are empty)."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
