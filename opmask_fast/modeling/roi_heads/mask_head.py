"""Class-agnostic mask head (7 x conv 256 + BN, 2x transposed conv, 1x1 predictor -> 28x28 logits), its targets, the
partially supervised loss and the box-supervised terms for box-only RoIs (BoxInst's projection and pairwise terms)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class MaskRoIs:
    """The mask branch's training RoIs over the batch (R in all)."""
    boxes: list[Tensor]  # per image, `Tensor[R_i, 4]`
    rows: Tensor  # `Tensor[R]`: each RoI's row among the batch's sampled RoIs (its box-head features)
    classes: Tensor  # `Tensor[R]`
    targets: Tensor  # `Tensor[R, S, S]`: mask targets (zeros where the GT has no mask)
    supervised: Tensor  # `Tensor[R]` bool: the GT has a mask
    gt_boxes: Tensor | None  # `Tensor[R, 4]`: the GT boxes, for the box-supervised terms (None when not asked)


def mask_training_rois(samples: list[dict], targets: list[dict], *, mask_size: int, supervised_only: bool,
                       with_gt_boxes: bool) -> MaskRoIs:
    """The foreground RoIs of each image's `samples` (RoIHeads.label_and_sample: foreground first), all of them or
    (`supervised_only`) those whose GT has a mask, with their mask targets of side `mask_size`."""
    boxes, rows, classes, masks, supervised, gt_boxes = [], [], [], [], [], []
    offset = 0
    for s, t in zip(samples, targets):
        nf = s["num_fg"]
        gi = s["gt_index"][:nf]
        has = t["has_mask"].to(gi.device).bool()[gi] if nf else gi.new_zeros(0, dtype=torch.bool)
        keep = has if supervised_only else torch.ones_like(has)
        b = s["boxes"][:nf][keep]
        boxes.append(b)
        rows.append(torch.arange(offset, offset + nf, device=gi.device)[keep])
        classes.append(s["classes"][:nf][keep])
        supervised.append(has[keep])
        if with_gt_boxes:
            gt_boxes.append(t["boxes"].to(b)[gi[keep]] if nf else b.new_zeros((0, 4)))
        masks.append(mask_targets(t["masks"], b, gi[keep], mask_size) if bool(has.any()) else
                     b.new_zeros((b.shape[0], mask_size, mask_size)))
        offset += s["boxes"].shape[0]
    return MaskRoIs(boxes, torch.cat(rows), torch.cat(classes), torch.cat(masks), torch.cat(supervised),
                    torch.cat(gt_boxes) if with_gt_boxes else None)


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


# BoxInst's pairwise term (Tian et al. 2021) with its own settings, not tuned here: neighbours at dilation 2 in a 3x3
# window, an edge counts when the colour similarity exp(-||Lab_i - Lab_j|| / 2) is at least 0.3, only at cells inside
# the GT box, loss weight 1; BoxInst's linear warm-up of the term over its first 10k of 90k iterations is
# `roi_heads.pairwise_warmup_iters` (RoIHeads applies it).
PAIRWISE_DILATION = 2
PAIRWISE_COLOR_THRESHOLD = 0.3


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """`Tensor[N, 3, H, W]` sRGB in 0..255 -> CIE Lab (D65 white, as skimage's rgb2lab that BoxInst uses), in float32
    also under autocast."""
    c = (rgb.float() / 255.0).clamp(0.0, 1.0)
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = lin.new_tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    # Outside autocast: it would run the matmul in bf16, off by up to 0.6 in Lab, next to the pairwise term's colour
    # cut of about 2.4.
    with torch.autocast(rgb.device.type, enabled=False):
        xyz = torch.einsum("ij,njhw->nihw", m, lin) / lin.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    return torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)


def pairwise_color_loss(logits: Tensor, lab: Tensor, rois: Tensor, gt_boxes: Tensor, weak: Tensor) -> Tensor:
    """BoxInst's pairwise term for RoIs whose GT has a box only: two neighbouring cells of similar colour should take
    the same label, scored by -log P(same) = -log(p_i p_j + (1 - p_i)(1 - p_j)).

    Args:
        logits: `Tensor[R, S, S]` mask logits; lab: `Tensor[R, 3, S, S]` the image's Lab colour at the same cells
        (RoIAlign of `rgb_to_lab(image)`); rois, gt_boxes: `Tensor[R, 4]` RoI boxes and matched GT boxes;
        weak: `Tensor[R]` bool, the RoIs to supervise this way.
    Returns:
        scalar, the mean over the counted edges (each neighbour pair once); an exact zero that keeps the graph when no
        RoI is weak or no edge counts.
    """
    if not bool(weak.any()):
        return logits.sum() * 0.0
    x, c, r, g = logits[weak].float(), lab[weak].float(), rois[weak].float(), gt_boxes[weak].float()
    s, d = x.shape[-1], PAIRWISE_DILATION
    frac = (torch.arange(s, device=x.device, dtype=torch.float32) + 0.5) / s
    cx = r[:, 0:1] + frac * (r[:, 2:3] - r[:, 0:1])
    cy = r[:, 1:2] + frac * (r[:, 3:4] - r[:, 1:2])
    inside = ((cy >= g[:, 1:2]) & (cy <= g[:, 3:4]))[:, :, None] & ((cx >= g[:, 0:1]) & (cx <= g[:, 2:3]))[:, None, :]
    log_fg, log_bg = F.logsigmoid(x), F.logsigmoid(-x)
    total, count = x.sum() * 0.0, x.new_zeros(())
    # The 8 neighbours of BoxInst's 3x3 window visit each pair twice; these 4 offsets visit it once (same mean).
    for dy, dx in ((0, d), (d, 0), (d, d), (d, -d)):
        ya, yb = slice(0, s - dy), slice(dy, s)
        xa, xb = (slice(0, s - dx), slice(dx, s)) if dx >= 0 else (slice(-dx, s), slice(0, s + dx))
        sim = torch.exp(-torch.linalg.vector_norm(c[:, :, ya, xa] - c[:, :, yb, xb], dim=1) * 0.5)
        w = ((sim >= PAIRWISE_COLOR_THRESHOLD) & inside[:, ya, xa]).float()
        same = torch.logaddexp(log_fg[:, ya, xa] + log_fg[:, yb, xb], log_bg[:, ya, xa] + log_bg[:, yb, xb])
        total = total - (same * w).sum()
        count = count + w.sum()
    return total / count.clamp(min=1.0)


def weak_mask_losses(logits: Tensor, boxes: list[Tensor], gt_boxes: Tensor, weak: Tensor, *, kind: str,
                     images: Tensor | None = None, pairwise_weight: Tensor | float = 1.0) -> dict[str, Tensor]:
    """The box-supervised terms `kind` (`RoIHeadsConfig.weak_mask_loss`) of the mask `logits Tensor[R, M, M]` of the
    RoIs `boxes` (per image) on the box-only RoIs `weak Tensor[R]` (bool), whose GT boxes are `gt_boxes Tensor[R, 4]`:
    "loss_mask_box" (projection) and, with the pairwise term, "loss_mask_pairwise" times `pairwise_weight` (its
    warm-up), which reads the image's colour (`images Tensor[N, 3, H, W]`, RGB 0..255) at the mask's cells."""
    if kind == "none":
        return {}
    rois = torch.cat(boxes)
    out = {"loss_mask_box": box_projection_loss(logits, rois, gt_boxes, weak)}
    if kind == "box_projection_pairwise":
        # The image's Lab colour at the mask's cells, by the same RoIAlign convention as the mask targets.
        lab = roi_align(rgb_to_lab(images), boxes, logits.shape[-1], 1.0, 0, True)
        out["loss_mask_pairwise"] = pairwise_color_loss(logits, lab, rois, gt_boxes, weak) * pairwise_weight
    return out
