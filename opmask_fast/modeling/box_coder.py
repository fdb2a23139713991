"""Box regression targets: detectron2's Box2BoxTransform (same maths as torchvision's BoxCoder)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) is capped so a wild regression cannot make a box 1000x bigger than its anchor in one step.
_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes relative to reference boxes as (dx, dy, dw, dh) and decode them back.

    dx = wx * (x_t - x_r) / w_r, dw = ww * log(w_t / w_r) (centres x, y; widths w, h), all in float32 whatever the input
    dtype, since log/exp of half-precision sizes loses whole pixels on large images.

    Args:
        weights: (wx, wy, ww, wh); (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
        scale_clamp: upper bound on dw, dh before exp.
    """

    def __init__(self, *, weights: tuple[float, float, float, float], scale_clamp: float = _SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, targets: Tensor, reference: Tensor) -> Tensor:
        """`Tensor[N, 4]` target boxes, `Tensor[N, 4]` reference boxes -> `Tensor[N, 4]` deltas."""
        targets, reference = targets.float(), reference.float()
        wx, wy, ww, wh = self.weights
        rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
        tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
        tx, ty = targets[:, 0] + 0.5 * tw, targets[:, 1] + 0.5 * th
        return torch.stack([wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)],
                           dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """`Tensor[N, 4k]` deltas (k boxes per reference, e.g. one per class), `Tensor[N, 4]` -> `Tensor[N, 4k]` boxes."""
        deltas, reference = deltas.float(), reference.float()
        wx, wy, ww, wh = self.weights
        rw, rh = reference[:, 2:3] - reference[:, 0:1], reference[:, 3:4] - reference[:, 1:2]
        rx, ry = reference[:, 0:1] + 0.5 * rw, reference[:, 1:2] + 0.5 * rh
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)  # (N, k, 4)
        return out.reshape(deltas.shape[0], out.shape[1] * 4)  # not -1: N may be 0 (an image without proposals)
