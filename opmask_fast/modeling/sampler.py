"""Balanced random sampling of foreground / background examples (detectron2's subsample_labels)."""

from __future__ import annotations

import torch
from torch import Tensor


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
