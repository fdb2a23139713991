"""Class-agnostic mask head (7 x conv 256 + BN, 2x transposed conv, 1x1 predictor -> 28x28 logits), its targets and the
partially supervised loss."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opmask_fast.ops import roi_align

from ..layers import conv_norm_relu


class MaskHead(nn.Module):
    """forward: `Tensor[R, C, 14, 14]` (RoI features, the prior already added for OPMask) -> logits `Tensor[R, 28, 28]`."""

    def __init__(self, *, in_channels: int, conv_dim: int = 256, num_convs: int = 7, norm: str = "BN"):
        super().__init__()
        dims = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.Sequential(*[conv_norm_relu(a, b, norm=norm) for a, b in zip(dims[:-1], dims[1:])])
        self.deconv = nn.ConvTranspose2d(dims[-1], conv_dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, 1, kernel_size=1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor, inject: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """`inject`, when given, maps the input of every conv after the first (`Tensor[R, conv_dim, 14, 14]`) to what
        that conv reads: the prior added again at every depth, so a deep head cannot wash it out."""
        for i, conv in enumerate(self.convs):
            x = conv(x if inject is None or i == 0 else inject(x))
        x = F.relu(self.deconv(x))
        return self.predictor(x)[:, 0]


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Crop each RoI's GT bitmap to `size` x `size` with RoIAlign (detectron2's crop_and_resize).

    Args:
        gt_masks: `Tensor[G, H, W]` uint8/bool bitmaps of one image.
        boxes: `Tensor[R, 4]` RoI boxes in that image; gt_index: `Tensor[R]` int64, the GT each RoI matched.
    Returns:
        `Tensor[R, size, size]` float32 in {0, 1} (thresholded at 0.5).
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size), dtype=torch.float32)
    # Pool straight from the G bitmaps by GT index instead of gathering one full-size bitmap per RoI.
    rois = torch.cat([gt_index[:, None].to(torch.float32), boxes.float()], dim=1)
    out = roi_align(gt_masks[:, None].to(torch.float32), rois, (size, size), 1.0, 0, True)
    return (out[:, 0] >= 0.5).to(torch.float32)


def mask_loss(logits: Tensor, targets: Tensor, supervised: Tensor) -> Tensor:
    """Partially supervised BCE: mean over the pixels of the RoIs whose GT has a mask.

    Args:
        logits: `Tensor[R, 28, 28]`; targets: `Tensor[R, 28, 28]`; supervised: `Tensor[R]` bool.
    Returns:
        scalar; an exact zero that keeps the graph (so every parameter still gets a gradient) when no RoI is supervised.
    """
    if not bool(supervised.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[supervised].float(), targets[supervised], reduction="mean")


def box_projection_loss(logits: Tensor, rois: Tensor, gt_boxes: Tensor, weak: Tensor) -> Tensor:
    """Box supervision for RoIs whose GT has a box only (BoxInst's projection term, Tian et al. 2021): the mask's
    maximum along each column must cover the GT box's x extent and along each row its y extent, scored by Dice.

    Args:
        logits: `Tensor[R, S, S]` mask logits; rois: `Tensor[R, 4]` the RoI boxes they cover (x0, y0, x1, y1);
        gt_boxes: `Tensor[R, 4]` each RoI's matched GT box; weak: `Tensor[R]` bool, the RoIs to supervise this way.
    Returns:
        scalar, the mean over weak RoIs of Dice(x projection) + Dice(y projection); an exact zero that keeps the graph
        when no RoI is weak.
    """
    if not bool(weak.any()):
        return logits.sum() * 0.0
    p, r, g = logits[weak].float().sigmoid(), rois[weak].float(), gt_boxes[weak].float()
    s = p.shape[-1]
    frac = (torch.arange(s, device=p.device, dtype=torch.float32) + 0.5) / s  # bin centres across the RoI
    cx = r[:, 0:1] + frac * (r[:, 2:3] - r[:, 0:1])  # [N, S] image x of each column
    cy = r[:, 1:2] + frac * (r[:, 3:4] - r[:, 1:2])
    tx = ((cx >= g[:, 0:1]) & (cx <= g[:, 2:3])).float()
    ty = ((cy >= g[:, 1:2]) & (cy <= g[:, 3:4])).float()
    return (_dice(p.amax(dim=1), tx) + _dice(p.amax(dim=2), ty)).mean()


def _dice(p: Tensor, t: Tensor) -> Tensor:
    """Per-row Dice loss 1 - 2 sum(p t) / (sum(p^2) + sum(t^2)) of `Tensor[N, S]` pairs -> `Tensor[N]`."""
    return 1.0 - 2.0 * (p * t).sum(1) / ((p * p).sum(1) + (t * t).sum(1)).clamp_min(1e-6)
