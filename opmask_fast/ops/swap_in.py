"""OPMask's object mask prior in torchvision's Mask R-CNN (an example of swapping the prior into a known detector).

    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from opmask_fast.ops.swap_in import add_object_mask_prior

    model = add_object_mask_prior(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91),
                                  scale="none")

The CAM needs a classifier that acts on globally average-pooled conv features, which torchvision's MLP box head does
not have: `add_object_mask_prior` puts in a conv box head ending in global average pooling (`ConvGAPBoxHead`, as in
OPMask) with a new predictor (both need training), and replaces the RoI heads by `PriorRoIHeads`, whose mask branch
adds each RoI's prior to its RoIAlign mask features. Training: the class slice is the RoI's ground-truth class.
Inference: the predicted class, taken from the box-head map of the proposal each detection came from. The classifier
weight is detached, so mask gradients refine the box features only. The backbone, RPN and mask head are kept.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from opmask_fast.ops.object_mask_prior import ObjectMaskPrior


class ConvGAPBoxHead(nn.Module):
    """Box head of 3x3 conv + BatchNorm + ReLU layers, then global average pooling.

    Returns (Tensor[N, C] pooled features for the predictor, Tensor[N, C, 7, 7] last map for the CAM).
    """

    def __init__(self, *, in_channels: int, channels: Sequence[int] = (256, 512, 1024, 1024)):
        super().__init__()
        layers = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        box_map = self.convs(x)
        return box_map.mean(dim=(2, 3)), box_map


class PriorRoIHeads(RoIHeads):
    """torchvision's RoIHeads (boxes and masks, no keypoints) with the object mask prior in the mask branch."""

    def __init__(self, *, prior_scale: str | float = "none", **roi_heads_kwargs):
        super().__init__(**roi_heads_kwargs)
        if not self.has_mask() or self.has_keypoint():
            raise ValueError("PriorRoIHeads needs a mask branch and supports no keypoint branch")
        # The classifier is passed on every call: torchvision's fine-tuning recipe replaces box_predictor after the
        # model is built, and the prior must follow (a reference kept here would go on reading the old one).
        self.prior = ObjectMaskPrior(scale=prior_scale)

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, *, box_head: nn.Module, box_predictor: nn.Module,
                       prior_scale: str | float = "none") -> "PriorRoIHeads":
        """The same heads (samplers, thresholds, RoI pools, mask head) with a new box head and predictor."""
        return cls(prior_scale=prior_scale, box_roi_pool=heads.box_roi_pool, box_head=box_head,
                   box_predictor=box_predictor, fg_iou_thresh=heads.proposal_matcher.high_threshold,
                   bg_iou_thresh=heads.proposal_matcher.low_threshold,
                   batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
                   positive_fraction=heads.fg_bg_sampler.positive_fraction, bbox_reg_weights=heads.box_coder.weights,
                   score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
                   detections_per_img=heads.detections_per_img, mask_roi_pool=heads.mask_roi_pool,
                   mask_head=heads.mask_head, mask_predictor=heads.mask_predictor)

    def postprocess_with_rows(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                              image_shapes: list[tuple[int, int]]):
        """torchvision's postprocess_detections that also returns each detection's proposal row (Tensor[M_i] into
        the concatenated proposals), so its prior comes from the box features of the proposal it came from."""
        num_classes = class_logits.shape[-1]
        counts = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(counts)
        pred_scores = F.softmax(class_logits, -1).split(counts)
        all_boxes, all_scores, all_labels, all_rows = [], [], [], []
        offset = 0
        for boxes, scores, image_shape, n in zip(pred_boxes, pred_scores, image_shapes, counts):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            rows = (torch.arange(n, device=boxes.device) + offset).view(-1, 1).expand_as(scores)
            offset += n
            # Drop the background column (index 0 in torchvision), one candidate per (proposal, class).
            boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels, rows = labels[:, 1:].reshape(-1), rows[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
            all_rows.append(rows[keep])
        return all_boxes, all_scores, all_labels, all_rows

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: Optional[list[dict[str, Tensor]]] = None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled, box_map = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(pooled)

        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            # Mask RoIs are the positive samples; their box-feature rows index the concatenated proposals.
            pos = [torch.where(lab > 0)[0] for lab in labels]
            offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]]).cumsum(0).tolist()
            mask_boxes = [p[i] for p, i in zip(proposals, pos)]
            rows = torch.cat([i + off for i, off in zip(pos, offsets)])
            classes = torch.cat([lab[i] for lab, i in zip(labels, pos)])
        else:
            boxes, scores, det_labels, det_rows = self.postprocess_with_rows(class_logits, box_regression, proposals,
                                                                             image_shapes)
            result = [{"boxes": b, "labels": lab, "scores": s} for b, lab, s in zip(boxes, det_labels, scores)]
            mask_boxes, rows, classes = boxes, torch.cat(det_rows), torch.cat(det_labels)

        mask_features = self.mask_roi_pool(features, mask_boxes, image_shapes)
        # + the CAM of the RoI's class, on every channel
        mask_features = self.prior(mask_features, box_map, classes, rows, self.box_predictor.cls_score.weight)
        mask_logits = self.mask_predictor(self.mask_head(mask_features))
        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            pos_matched = [m[i] for m, i in zip(matched_idxs, pos)]
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_boxes, gt_masks, gt_labels, pos_matched)
        else:
            for mask_prob, r in zip(maskrcnn_inference(mask_logits, det_labels), result):
                r["masks"] = mask_prob
        return result, losses


def add_object_mask_prior(model: nn.Module, *, box_channels: Sequence[int] = (256, 512, 1024, 1024),
                          scale: str | float = "none") -> nn.Module:
    """Put the object mask prior into a torchvision MaskRCNN (in place; returns it).

    The box head becomes ConvGAPBoxHead(box_channels) with a new FastRCNNPredictor (to be trained); `scale` is the
    prior's weight (`opmask_fast.ops.prior_weight`: "none" = 1 as in the paper, "learnable", "feature_std",
    "feature_range" or a float).
    """
    heads = model.roi_heads
    num_classes = heads.box_predictor.cls_score.out_features
    box_head = ConvGAPBoxHead(in_channels=model.backbone.out_channels, channels=box_channels)
    predictor = FastRCNNPredictor(box_head.out_channels, num_classes)
    model.roi_heads = PriorRoIHeads.from_roi_heads(heads, box_head=box_head, box_predictor=predictor,
                                                   prior_scale=scale)
    return model
