"""Balanced random sampling of foreground / background examples (detectron2's subsample_labels), and the box head's
training RoIs labelled by their matched ground truth and sampled that way."""

from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import pairwise_iou
from .matcher import Matcher


def subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int) -> tuple[Tensor, Tensor]:
    """Pick at most `num_samples` indices, at most `positive_fraction` of them foreground, the rest background.

    Args:
        labels: `Tensor[N]`: -1 ignore, `bg_label` background, anything else foreground.
    Returns:
        (foreground indices `Tensor[P]`, background indices `Tensor[Q]`) int64, P + Q <= num_samples, random order.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg


@torch.no_grad()
def label_and_sample(proposals: list[Tensor], targets: list[dict], *, matcher: Matcher, num_classes: int,
                     batch_size_per_image: int, positive_fraction: float, append_gt: bool) -> list[dict]:
    """Per image: the proposals (with the GT boxes appended when `append_gt`) matched to the GT by `matcher`,
    sampled by `subsample_labels`: `boxes Tensor[S, 4]`, `classes Tensor[S]` (`num_classes` = background),
    `gt_index Tensor[S]` (the matched GT), foreground first, and `num_fg`."""
    out = []
    k = num_classes
    for props, t in zip(proposals, targets):
        gt = t["boxes"].to(props)
        if append_gt:
            props = torch.cat([props, gt])
        matches, labels = matcher(pairwise_iou(gt, props))
        if gt.shape[0] > 0:
            classes = t["labels"].to(props.device)[matches]
        else:
            classes = torch.full_like(matches, k)
        classes = torch.where(labels == 0, torch.full_like(classes, k), classes)
        pos, neg = subsample_labels(classes, batch_size_per_image, positive_fraction, k)
        idx = torch.cat([pos, neg])
        out.append({"boxes": props[idx], "classes": classes[idx], "gt_index": matches[idx], "num_fg": pos.numel()})
    return out
