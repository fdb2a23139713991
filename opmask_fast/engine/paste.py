"""Pasting per-box maps (mask probabilities, priors) into the image, and mask encoding for COCO results."""

from __future__ import annotations

import math

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
    m = maps.shape[0]
    out = torch.zeros((m, h, w), dtype=torch.float32)
    maps = maps.detach().float().cpu()
    boxes = boxes.detach().float().cpu()
    for i in range(m):
        x0, y0, x1, y1 = boxes[i].tolist()
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            continue
        # Only the pixels the box touches are resampled; pixel centres sit at +0.5.
        ix0, iy0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        ix1, iy1 = min(int(math.ceil(x1)), w), min(int(math.ceil(y1)), h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        xs = (torch.arange(ix0, ix1, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(iy0, iy1, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        out[i, iy0:iy1, ix0:ix1] = F.grid_sample(maps[i][None, None], grid, align_corners=False)[0, 0]
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
