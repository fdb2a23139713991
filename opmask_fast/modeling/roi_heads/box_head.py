"""OPMask's box head: 4 x (3x3 conv, norm, ReLU) on the 7x7 RoI features, global average pooling, then a (K+1)-way
classifier (background last) and class-specific box regression. The last conv map is what the object prior is a CAM of."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import conv_norm_relu


class BoxHead(nn.Module):
    """Args:
        in_channels: FPN width.
        conv_dims: output channels of each conv (OPMask: 512, 1024, 1024, 1024).
        norm: norm after each conv.
        num_classes: K foreground classes.

    forward: `Tensor[R, in_channels, 7, 7]` -> (box features `Tensor[R, C, 7, 7]`, class logits `Tensor[R, K + 1]`,
    box deltas `Tensor[R, 4K]`).
    """

    def __init__(self, *, in_channels: int, conv_dims: tuple[int, ...], norm: str, num_classes: int):
        super().__init__()
        dims = (in_channels, *conv_dims)
        self.convs = nn.Sequential(*[conv_norm_relu(a, b, norm=norm) for a, b in zip(dims[:-1], dims[1:])])
        self.cls_score = nn.Linear(dims[-1], num_classes + 1)
        self.bbox_pred = nn.Linear(dims[-1], 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.convs(x)
        pooled = feats.mean(dim=(2, 3))
        return feats, self.cls_score(pooled), self.bbox_pred(pooled)

    def conv_map(self, x: Tensor, residual: nn.ParameterList | None = None) -> Tensor:
        """The last conv map of `x Tensor[R, in_channels, H, W]` at any H x W (the convs are 3x3, padded), each
        BatchNorm applied with its running statistics and leaving them unchanged, in training too: the CAM at the mask
        head's resolution reads the box head as it stands, the same way in training and at inference, and does not
        pull the statistics the box classifier normalises with towards another resolution's. Gradients flow to the
        conv and norm weights as in `forward`; with `residual` (one tensor per conv, shaped like its weight) each conv
        runs with weight.detach() + residual and the norms' weights detached, so a gradient trains the residuals and
        never the box head. -> `Tensor[R, C, H, W]`."""
        for i, (conv, norm, _) in enumerate(self.convs):
            if residual is None:
                x = conv(x)
            else:
                bias = None if conv.bias is None else conv.bias.detach()
                x = F.conv2d(x, conv.weight.detach() + residual[i], bias, conv.stride, conv.padding)
            if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and norm.running_mean is not None:
                x = F.batch_norm(x, norm.running_mean, norm.running_var, *_affine(norm, residual is not None), False,
                                 0.0, norm.eps)
            elif isinstance(norm, nn.GroupNorm) and residual is not None:
                x = F.group_norm(x, norm.num_groups, *_affine(norm, True), norm.eps)
            else:  # identity, frozen BatchNorm (no trained weights), or GroupNorm read as is
                x = norm(x)
            x = F.relu(x)
        return x


class PriorHead(nn.Module):
    """The box head's convs and classifier without its box regression, for a prior of its own
    (`prior_convs="separate"`): it classifies each mask RoI from its mask-resolution features (the classification
    loss keeps its classifier rows, which the CAM reads, matched to its convs), and its last conv map is the CAM's
    source. Its BatchNorms use the mask RoIs' batch statistics in training, as the box head's use the sampled RoIs'.
    `width`: each conv's output channels (as many convs as `conv_dims`); 0: `conv_dims`, the box head's.

    forward: `Tensor[R, in_channels, H, W]` -> (conv map `Tensor[R, C, H, W]`, class logits `Tensor[R, K + 1]`).
    """

    def __init__(self, *, in_channels: int, conv_dims: tuple[int, ...], norm: str, num_classes: int, width: int = 0):
        super().__init__()
        dims = (in_channels, *((width,) * len(conv_dims) if width else conv_dims))
        self.convs = nn.Sequential(*[conv_norm_relu(a, b, norm=norm) for a, b in zip(dims[:-1], dims[1:])])
        self.cls_score = nn.Linear(dims[-1], num_classes + 1)  # background last, as the box head's
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.convs(x)
        return feats, self.cls_score(feats.mean(dim=(2, 3)))


def _affine(norm: nn.Module, detach: bool) -> tuple[Tensor | None, Tensor | None]:
    """A norm layer's weight and bias (None without affine), detached when asked."""
    weight, bias = norm.weight, norm.bias
    return (weight, bias) if not detach or weight is None else (weight.detach(), bias.detach())


def box_losses(logits: Tensor, deltas: Tensor, gt_classes: Tensor, gt_deltas: Tensor, *,
               smooth_l1_beta: float) -> dict[str, Tensor]:
    """detectron2's FastRCNNOutputLayers losses.

    Args:
        logits: `Tensor[R, K + 1]`; deltas: `Tensor[R, 4K]`.
        gt_classes: `Tensor[R]` int64 in 0..K (K = background).
        gt_deltas: `Tensor[R, 4]` regression targets (rows of background RoIs are ignored).
    Returns:
        loss_cls (mean cross-entropy), loss_box_reg (L1 over foreground RoIs of their GT class, divided by R).
    """
    num_classes = logits.shape[1] - 1
    loss_cls = F.cross_entropy(logits.float(), gt_classes, reduction="mean")
    fg = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes)).squeeze(1)
    d = deltas.float().view(deltas.shape[0], num_classes, 4)[fg, gt_classes[fg]]
    diff = d - gt_deltas[fg]
    if smooth_l1_beta < 1e-5:
        reg = diff.abs().sum()
    else:
        reg = F.smooth_l1_loss(d, gt_deltas[fg], beta=smooth_l1_beta, reduction="sum")
    return {"loss_cls": loss_cls, "loss_box_reg": reg / max(gt_classes.numel(), 1)}
