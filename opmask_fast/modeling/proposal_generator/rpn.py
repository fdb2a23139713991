"""Region proposal network over P2..P6: head, anchor matching and losses, and per-level top-k + NMS (as detectron2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opmask_fast.ops import batched_nms

from ..box_coder import BoxCoder
from ..box_ops import clip_boxes, nonempty, pairwise_iou
from ..matcher import Matcher
from ..sampler import subsample_labels
from .anchors import AnchorGenerator


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas, the same weights on every level."""

    def __init__(self, *, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """-> per level: logits `Tensor[N, H*W*A]` and deltas `Tensor[N, H*W*A, 4]` (location-major, anchor-minor)."""
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            n, _, h, w = t.shape
            logits.append(self.objectness(t).permute(0, 2, 3, 1).reshape(n, -1))
            deltas.append(self.deltas(t).view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return logits, deltas


class RPN(nn.Module):
    """Args:
        cfg: an `RPNConfig`.
        channels: FPN width.
        strides: stride of each input level (P2..P6).
    """

    def __init__(self, *, cfg, channels: int, strides: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(sizes=cfg.anchor_sizes, ratios=cfg.anchor_ratios, strides=strides)
        self.head = RPNHead(channels=channels, num_anchors=self.anchor_generator.num_anchors)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(thresholds=cfg.iou_thresholds, labels=(0, -1, 1), allow_low_quality_matches=True)

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]],
                gt_boxes: list[Tensor] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Args:
            features: P2..P6, each `Tensor[N, C, H_l, W_l]`.
            image_sizes: (h, w) of each image before padding (proposals are clipped to it).
            gt_boxes: per image `Tensor[G_i, 4]`, training only.
        Returns:
            proposals: per image `Tensor[P_i, 4]` (detached), sorted by objectness; losses (empty at inference).
        """
        anchors = self.anchor_generator(features)
        logits, deltas = self.head(features)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("the RPN needs gt_boxes in training mode")
            losses = self.losses(anchors, logits, deltas, gt_boxes)
        with torch.no_grad():
            proposals = self.find_top_proposals(anchors, logits, deltas, image_sizes)
        return proposals, losses

    # -------------------------------------------------------------------------------------------------------- losses
    def losses(self, anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
               gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        all_anchors = torch.cat(anchors)  # (A, 4)
        labels, targets = [], []
        with torch.no_grad():
            for gt in gt_boxes:
                gt = gt.to(all_anchors)
                matches, match_labels = self.matcher(pairwise_iou(gt, all_anchors))
                lab = match_labels.to(torch.int64)
                pos, neg = subsample_labels(lab, self.cfg.batch_size_per_image, self.cfg.positive_fraction, 0)
                lab = torch.full_like(lab, -1)
                lab[pos], lab[neg] = 1, 0
                labels.append(lab)
                matched = gt[matches] if gt.numel() else torch.zeros_like(all_anchors)
                targets.append(matched)
        labels_t = torch.stack(labels)  # (N, A)
        logits_t = torch.cat(logits, dim=1).float()  # (N, A)
        deltas_t = torch.cat(deltas, dim=1).float()  # (N, A, 4)
        valid, pos = labels_t >= 0, labels_t == 1
        normalizer = self.cfg.batch_size_per_image * len(gt_boxes)
        loss_cls = F.binary_cross_entropy_with_logits(logits_t[valid], labels_t[valid].float(), reduction="sum")
        img_idx, anchor_idx = pos.nonzero(as_tuple=True)
        target_boxes = torch.stack(targets)[img_idx, anchor_idx]
        gt_deltas = self.box_coder.encode(target_boxes, all_anchors[anchor_idx])
        loss_loc = _smooth_l1(deltas_t[img_idx, anchor_idx], gt_deltas, self.cfg.smooth_l1_beta).sum()
        return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}

    # ----------------------------------------------------------------------------------------------------- proposals
    def find_top_proposals(self, anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                           image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        pre_k = self.cfg.pre_nms_topk_train if self.training else self.cfg.pre_nms_topk_test
        post_k = self.cfg.post_nms_topk_train if self.training else self.cfg.post_nms_topk_test
        n = logits[0].shape[0]
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (anc, lg, dl) in enumerate(zip(anchors, logits, deltas)):
            k = min(pre_k, lg.shape[1])
            scores, idx = lg.float().topk(k, dim=1)  # (N, k), sorted: per-level top-k, as detectron2
            sel_deltas = dl.gather(1, idx[..., None].expand(n, k, 4)).reshape(-1, 4)
            boxes = self.box_coder.decode(sel_deltas, anc[idx.reshape(-1)]).view(n, k, 4)
            boxes_l.append(boxes)
            scores_l.append(scores)
            level_l.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
        boxes_all, scores_all, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(level_l)
        proposals = []
        for i, (h, w) in enumerate(image_sizes):
            boxes, scores, lv = boxes_all[i], scores_all[i], levels
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(finite.all()):
                if self.training:
                    raise FloatingPointError("predicted RPN boxes or scores are not finite: training has diverged")
                boxes, scores, lv = boxes[finite], scores[finite], lv[finite]
            boxes = clip_boxes(boxes, h, w)
            keep = nonempty(boxes, self.cfg.min_box_size)
            boxes, scores, lv = boxes[keep], scores[keep], lv[keep]
            keep = batched_nms(boxes, scores, lv, self.cfg.nms_thresh)[:post_k]
            proposals.append(boxes[keep])
        return proposals


def _smooth_l1(x: Tensor, y: Tensor, beta: float) -> Tensor:
    """Elementwise smooth L1; beta 0 is plain L1 (detectron2's choice for both box losses)."""
    if beta < 1e-5:
        return (x - y).abs()
    return F.smooth_l1_loss(x, y, beta=beta, reduction="none")
