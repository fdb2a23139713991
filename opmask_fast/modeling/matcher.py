"""Assign each prediction (anchor or proposal) to its best ground-truth box, with IoU thresholds (detectron2's Matcher)."""

from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """Args:
        thresholds: increasing IoU cut points, e.g. (0.3, 0.7).
        labels: one label per interval, len(thresholds) + 1, e.g. (0, -1, 1): background, ignore, foreground.
        allow_low_quality_matches: also mark foreground the predictions with the highest IoU for each GT, so that every
            GT gets at least one positive anchor (RPN), even if that IoU is below the top threshold.
    """

    def __init__(self, *, thresholds: tuple[float, ...], labels: tuple[int, ...], allow_low_quality_matches: bool = False):
        if len(labels) != len(thresholds) + 1:
            raise ValueError("Matcher needs one label per threshold interval (len(thresholds) + 1)")
        if list(thresholds) != sorted(thresholds):
            raise ValueError(f"Matcher thresholds must increase, got {thresholds}")
        self.thresholds = [float("-inf"), *thresholds, float("inf")]
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """`Tensor[G, P]` IoU of G GT boxes with P predictions -> (matches `Tensor[P]` int64 GT index,
        labels `Tensor[P]` int8). With no GT every prediction gets GT index 0 and the first label (background)."""
        num_pred = quality.shape[1]
        if quality.shape[0] == 0:
            matches = quality.new_zeros(num_pred, dtype=torch.int64)
            return matches, quality.new_full((num_pred,), self.labels[0], dtype=torch.int8)
        matched_vals, matches = quality.max(dim=0)
        match_labels = matches.new_ones(num_pred, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(matched_vals >= low) & (matched_vals < high)] = label
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1, keepdim=True).values
            # Every prediction tied for a GT's best IoU (ties are common among same-shaped anchors); IoU 0 never counts.
            hit = ((quality == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            match_labels[hit] = 1
        return matches, match_labels
