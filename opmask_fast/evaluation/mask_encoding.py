"""Pasting per-box maps (mask probabilities, priors) into the image, and mask encoding for COCO results."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from ..modeling.paste import paste_mask_probs, paste_masks


def paste_maps(maps: Tensor, boxes: Tensor, image_size: tuple[int, int], *, threshold: float | None = 0.5) -> Tensor:
    """Resamples each ``maps[i]: Tensor[Hm, Wm]`` onto its box of an image of ``image_size``, with the model's own
    batched paste (:mod:`opmask_fast.modeling.paste`), so priors and masks are pasted by the same rule.

    Args:
        maps: ``Tensor[M, Hm, Wm]`` values in [0, 1] spanning the box (bin centres at the half-pixel positions, as
            RoIAlign with ``aligned=True`` samples them).
        boxes: ``Tensor[M, 4]`` xyxy in the pixel coordinates of the output image.
        image_size: (H, W) of the output.
        threshold: ``None`` returns the resampled values (0 outside the box's half-cell border); else the bool mask
            ``value >= threshold`` (detectron2's rule).

    Returns:
        ``Tensor[M, H, W]`` bool (or float32 when ``threshold`` is None).
    """
    h, w = image_size
    maps = maps.detach().float().cpu()
    boxes = boxes.detach().float().cpu()
    # A NaN or empty box pastes nothing (rather than NaN everywhere).
    valid = torch.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    maps = torch.where(valid[:, None, None], maps, torch.zeros(()))
    boxes = torch.where(valid[:, None], boxes, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    if threshold is not None:
        return paste_masks(maps, boxes, h, w, threshold=threshold)
    return paste_mask_probs(maps, boxes, h, w)


def encode_masks(masks: Tensor) -> list[dict]:
    """COCO compressed RLE (``counts`` as str, JSON-ready) of each ``masks[i]: Tensor[H, W]`` bool."""
    if masks.shape[0] == 0:
        return []
    arr = masks.detach().cpu().to(torch.uint8).numpy()
    rles = []
    # One mask at a time: pycocotools reads column-major masks, and turning each H x W plane on its own is about 3x
    # faster than one strided copy of all M planes (and holds one plane, not M, at a time).
    for plane in arr:
        rle = mask_utils.encode(np.asfortranarray(plane)[:, :, None])[0]
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
    return rles


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired masks ``a, b: Tensor[N, H, W]`` -> ``Tensor[N]`` (1 where both are empty)."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
