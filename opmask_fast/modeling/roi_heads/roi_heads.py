"""RoI heads: proposal sampling, the box head and its losses, the object prior, the class-agnostic mask head, inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opmask_fast.ops import (PriorWeight, add_weighted_map, batched_nms, multi_scale_roi_align, object_prior,
                             object_prior_add)

from ..box_coder import BoxCoder
from ..box_ops import clip_boxes
from ..matcher import Matcher
from ..sampler import label_and_sample
from .box_head import BoxHead, PriorHead, box_losses
from .mask_head import MaskHead, mask_loss, mask_training_rois, weak_mask_losses
from .prior import PriorTap

_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]  # RoIs are pooled from P2..P5


def _grad_only_from(prior: Tensor, grad_rois: Tensor | None) -> Tensor:
    """`prior Tensor[R, H, W]` with the same values, its gradient kept only for the RoIs where `grad_rois Tensor[R]`
    (bool) is set; None keeps every RoI's."""
    if grad_rois is None or not prior.requires_grad:
        return prior
    return torch.where(grad_rois[:, None, None], prior, prior.detach())


class RoIHeads(nn.Module):
    """Args:
        cfg: the `ModelConfig` (reads `roi_heads`, `num_classes`, `use_prior`, `prior_*`).
        in_channels: FPN width.
    """

    def __init__(self, *, cfg, in_channels: int):
        super().__init__()
        rc = cfg.roi_heads
        self.rc, self.num_classes, self.use_prior, self.prior_impl = rc, cfg.num_classes, cfg.use_prior, cfg.prior_impl
        box_kw = dict(in_channels=in_channels, conv_dims=tuple(rc.box_head_conv_dims), norm=rc.box_head_norm,
                      num_classes=cfg.num_classes)
        self.box_head = BoxHead(**box_kw)
        self.mask_head = MaskHead(in_channels=in_channels, conv_dim=rc.mask_head_conv_dim,
                                  num_convs=rc.mask_head_num_convs, norm=rc.mask_head_norm)
        # The prior's weight (ops.prior_weight; named prior_gain in checkpoints) and the point where the prior map meets
        # the mask features, which the test-time probes of `prior.py` hook (ablations, statistics).
        self.prior_gain = PriorWeight(scale=cfg.prior_scale, init=cfg.prior_gain_init,
                                      grad_scale=cfg.prior_grad_scale) if cfg.use_prior else None
        self.prior_tap = PriorTap() if cfg.use_prior else None
        self.prior_feature_norm, self.prior_every_conv = cfg.prior_feature_norm, cfg.prior_every_conv
        self.prior_cam, self.prior_resolution = cfg.prior_cam, cfg.prior_resolution
        self.prior_grad_rois = cfg.prior_grad_rois
        # prior_convs: what the prior's gradient trains in place of the box convs, residuals of their weights
        # (BoxHead.conv_map) or a prior head of its own.
        self.prior_conv_residual = nn.ParameterList([torch.zeros_like(u[0].weight) for u in self.box_head.convs]) \
            if cfg.prior_convs == "residual" else None
        self.prior_head = PriorHead(**box_kw, width=cfg.prior_head_width) if cfg.prior_convs == "separate" else None
        if rc.weak_mask_loss == "box_projection_pairwise":
            # Training steps taken, for the pairwise term's warm-up (a buffer: a resumed run continues the ramp).
            self.register_buffer("pairwise_step", torch.zeros((), dtype=torch.int64))
        self.box_coder = BoxCoder(weights=tuple(rc.box_reg_weights))
        self.matcher = Matcher(thresholds=(rc.iou_threshold,), labels=(0, 1))

    def pool(self, features: list[Tensor], boxes: list[Tensor], size: int, roi_map: Tensor | None = None,
             map_weight: str = "none") -> Tensor:
        # Without autograd (inference) the pooler runs as one opaque op: the same numbers, and a graph that traces.
        return multi_scale_roi_align(features[:4], boxes, size, spatial_scales=_SCALES,
                                     sampling_ratio=self.rc.pooler_sampling_ratio, aligned=True, roi_map=roi_map,
                                     map_weight=map_weight, static=not torch.is_grad_enabled())

    # ------------------------------------------------------------------------------------------------------ training
    def label_and_sample(self, proposals: list[Tensor], targets: list[dict]) -> list[dict]:
        """Per image: sampled RoI `boxes Tensor[S, 4]`, `classes Tensor[S]` (K = background), `gt_index Tensor[S]`,
        foreground first (`sampler.label_and_sample`)."""
        rc = self.rc
        return label_and_sample(proposals, targets, matcher=self.matcher, num_classes=self.num_classes,
                                batch_size_per_image=rc.batch_size_per_image, positive_fraction=rc.positive_fraction,
                                append_gt=rc.proposal_append_gt)

    def forward_train(self, features: list[Tensor], proposals: list[Tensor], targets: list[dict], *,
                      images: Tensor | None = None) -> dict[str, Tensor]:
        """Box and mask losses. `images Tensor[N, 3, H, W]` (RGB 0..255, the padded batch) is read only by the pairwise
        term (`weak_mask_loss="box_projection_pairwise"`), which needs the image's colours in each RoI."""
        pairwise = self.rc.weak_mask_loss == "box_projection_pairwise"
        if pairwise and images is None:
            raise ValueError('weak_mask_loss="box_projection_pairwise" needs the images (forward_train(..., images=))')
        samples = self.label_and_sample(proposals, targets)
        rois = [s["boxes"] for s in samples]
        box_feats, logits, deltas = self.box_head(self.pool(features, rois, self.rc.box_pooler_resolution))
        gt_classes = torch.cat([s["classes"] for s in samples])
        gt_deltas = []
        for s, t in zip(samples, targets):
            gt = t["boxes"].to(s["boxes"])
            matched = gt[s["gt_index"]] if gt.shape[0] else s["boxes"]
            gt_deltas.append(self.box_coder.encode(matched, s["boxes"]))
        losses = box_losses(logits, deltas, gt_classes, torch.cat(gt_deltas), smooth_l1_beta=self.rc.smooth_l1_beta)

        # Mask branch on foreground RoIs (sampled fg come first in each image), prior from the RoI's own box features.
        m = mask_training_rois(samples, targets, mask_size=self.mask_size,
                               supervised_only=self.rc.mask_head_on_supervised_only,
                               with_gt_boxes=self.rc.weak_mask_loss != "none")
        mask_boxes, rows_t, classes_t, supervised_t = m.boxes, m.rows, m.classes, m.supervised
        if rows_t.numel() == 0:
            if self.use_prior and self.prior_gain.needs_init():
                self.prior_gain.initialize(None, None)  # a collective when distributed: the others may measure now
            # No foreground RoI anywhere: an exact zero that still reaches every mask-branch parameter (DDP needs them
            # all used in every step).
            params = [*self.mask_head.parameters(), *(self.prior_gain.parameters() if self.use_prior else ()),
                      *(self.prior_conv_residual or ()), *(self.prior_head.parameters() if self.prior_head else ())]
            losses["loss_mask"] = sum(p.sum() for p in params) * 0.0
            if self.prior_head is not None:  # same keys in every step (ranks reduce them as one vector)
                losses["loss_prior_cls"] = losses["loss_mask"].clone()
            if self.rc.weak_mask_loss != "none":
                losses["loss_mask_box"] = losses["loss_mask"].clone()
            if pairwise:
                losses["loss_mask_pairwise"] = losses["loss_mask"].clone()
            return losses
        grad_rois = supervised_t if self.prior_grad_rois == "mask_supervised" else None
        aux: dict[str, Tensor] = {}
        mask_logits, _ = self.mask_forward(features, mask_boxes, box_feats, classes_t, rows_t, grad_rois=grad_rois,
                                           aux=aux)
        if self.prior_head is not None:  # the prior head classifies the mask RoIs (all foreground)
            losses["loss_prior_cls"] = F.cross_entropy(aux["prior_logits"].float(), classes_t)
        losses["loss_mask"] = mask_loss(mask_logits, m.targets, supervised_t)
        losses.update(weak_mask_losses(mask_logits, mask_boxes, m.gt_boxes, ~supervised_t, kind=self.rc.weak_mask_loss,
                                       images=images, pairwise_weight=self._ramp() if pairwise else 1.0))
        return losses

    def _ramp(self) -> Tensor | float:
        """The pairwise term's weight this step, (step + 1) / pairwise_warmup_iters at most 1 (a tensor: no host
        read), and counts the step."""
        self.pairwise_step += 1
        warmup = self.rc.pairwise_warmup_iters
        return 1.0 if warmup <= 0 else (self.pairwise_step.float() / warmup).clamp(max=1.0)

    @property
    def mask_size(self) -> int:
        return 2 * self.rc.mask_pooler_resolution

    @property
    def prior_size(self) -> int:
        """Side of the prior maps the model returns: the box pooler's, or the mask pooler's at mask resolution."""
        return self.rc.mask_pooler_resolution if self.prior_resolution == "mask" else self.rc.box_pooler_resolution

    # ---------------------------------------------------------------------------------------------------- mask + prior
    def mask_forward(self, features: list[Tensor], boxes: list[Tensor], box_feats: Tensor, classes: Tensor,
                     rows: Tensor, *, return_prior: bool = False, grad_rois: Tensor | None = None,
                     aux: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Mask logits `Tensor[R, 28, 28]` for the RoIs `boxes` (per image, R in all), with the prior of class `classes`
        `Tensor[R]` taken from `box_feats[rows]`; also the normalised prior `Tensor[R, P, P]` when asked or computed
        (P = `prior_size`). With `prior_resolution="mask"` the prior is the CAM of the box head's convs over the RoIs'
        own mask features instead (`box_feats` and `rows` are not read). `grad_rois Tensor[R]` (bool, training): only
        these RoIs' priors carry the mask losses' gradient back to the box head (`prior_grad_rois`). `aux` (training,
        `prior_convs="separate"`) receives the prior head's class logits of the RoIs, "prior_logits"."""
        res = self.rc.mask_pooler_resolution
        head = self.box_head if self.prior_head is None else self.prior_head
        cls_w = head.cls_score.weight.detach()  # the CAM never trains the classifier
        if self.prior_cam == "class_vs_background":
            cls_w = cls_w - cls_w[-1:]  # the map of the class-vs-background logit (background is the last row)
        weight = self.prior_gain
        if self.prior_resolution == "mask":
            return self._mask_resolution_forward(features, boxes, cls_w, classes, return_prior, grad_rois, aux)
        init = self.use_prior and weight.needs_init()
        fused = self.use_prior and self._fused()
        fused_map = fused and self.prior_impl == "roi_align"
        # The baseline reports the prior too (its prior AP), it just does not add it. Where the map rides on RoIAlign
        # and no gradient is asked (inference), one launch gives the returned 7x7 prior and the 14x14 map.
        one_pass = fused_map and return_prior and not torch.is_grad_enabled()
        prior = object_prior(box_feats, cls_w, classes, rows, validate=False) \
            if (return_prior or init) and not one_pass else None
        if not self.use_prior:
            return self.mask_head(self.pool(features, boxes, res)), prior
        if fused_map:
            # The prior, resized (and weighted when the weight is a constant), rides on RoIAlign's output write: no
            # extra pass over the mask features. An adaptive weight is read off each RoI's output by RoIAlign itself.
            scale = None if weight.adaptive else weight.value()
            roi_map = object_prior(box_feats, cls_w, classes, rows, size=(res, res), scale=scale,
                                   with_unresized=one_pass, validate=False)
            if one_pass:
                roi_map, prior = roi_map
            roi_map = _grad_only_from(roi_map, grad_rois)
            feats = self.pool(features, boxes, res, roi_map=roi_map, map_weight=weight.map_weight)
            return self.mask_head(feats), prior
        if fused:
            return self.mask_head(object_prior_add(self.pool(features, boxes, res), box_feats, cls_w, classes, rows,
                                                   normalize=True, scale=weight.value(), validate=False)), prior
        feats = self.pool(features, boxes, res)
        roi_map = object_prior(box_feats, cls_w, classes, rows, size=(res, res), validate=False)
        return self._add_in_second_pass(feats, _grad_only_from(roi_map, grad_rois), prior, init)

    def _mask_resolution_forward(self, features: list[Tensor], boxes: list[Tensor], cls_w: Tensor, classes: Tensor,
                                 return_prior: bool, grad_rois: Tensor | None,
                                 aux: dict[str, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """`mask_forward` with `prior_resolution="mask"`: the box head's convs run on the mask's own RoI features
        (the inputs they are trained on, before any standardisation) and the CAM of that map is the prior, at the
        mask head's resolution, so a hole or a gap narrower than a 7x7 cell can show in it; no resize. The prior exists
        only after the pooling, so the fused path adds the weighted map to the pooled features in one pass over them
        (`add_weighted_map`: the weight read off each RoI as RoIAlign's `map_weight` reads it). With
        prior_grad_scale=0 the box head gets nothing back through the prior: its convs run without autograd. With
        `prior_convs` "residual" or "separate" the prior's gradient trains the residuals or the prior head instead,
        which read the pooled features without gradient (see ModelConfig.prior_convs)."""
        res, weight = self.rc.mask_pooler_resolution, self.prior_gain
        pooled = self.pool(features, boxes, res)
        if not (self.use_prior or return_prior):
            return self.mask_head(pooled), None
        trains_prior = self.use_prior and weight.grad_scale != 0  # the prior's convs learn through it
        residual = self.prior_conv_residual
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_prior):
            if self.prior_head is not None:  # its own convs and classifier, on features detection keeps to itself
                conv_map, prior_logits = self.prior_head(pooled.detach())
                if aux is not None:
                    aux["prior_logits"] = prior_logits
            else:
                conv_map = self.box_head.conv_map(pooled if residual is None else pooled.detach(), residual)
            prior = _grad_only_from(object_prior(conv_map, cls_w, classes, None, validate=False), grad_rois)
        if not self.use_prior:  # the baseline reports the prior (its prior AP), it never adds it
            return self.mask_head(pooled), prior
        if self._fused():
            scale = None if weight.adaptive else weight.value()
            roi_map = prior if scale is None else prior * scale
            return self.mask_head(add_weighted_map(pooled, roi_map, weight.map_weight)), prior
        return self._add_in_second_pass(pooled, prior, prior, weight.needs_init())

    def _add_in_second_pass(self, feats: Tensor, roi_map: Tensor, prior: Tensor | None,
                            init: bool) -> tuple[Tensor, Tensor | None]:
        """The general path: the pooled mask features `feats`, optionally standardised, plus the weighted prior map
        `roi_map Tensor[R, H, W]` as a second pass (and, with prior_every_conv, again before every later mask-head
        conv); the probes of `prior.py` see the map here."""
        weight = self.prior_gain
        if self.prior_feature_norm:
            feats = F.layer_norm(feats, feats.shape[1:])
        roi_map = self.prior_tap(feats, roi_map)
        if init:
            weight.initialize(feats, prior)
        inject = (lambda x: weight(x, roi_map)) if self.prior_every_conv else None  # noqa: E731
        return self.mask_head(weight(feats, roi_map), inject), prior

    def _fused(self) -> bool:
        """Whether the weighted prior can be added as the mask features are written: a weight the fused op can
        compute (RoIAlign: any, adaptive ones too; object_prior_add: a constant), nothing done to the features first,
        and no probe attached to the prior map (the probes need the map apart: the general path). At mask resolution
        `add_weighted_map` adds it to the pooled features (whatever `prior_impl`), with any weight whose gradient is
        autograd's own or none."""
        probed = bool(self.prior_tap._forward_hooks)  # torch has no public query of a module's hooks
        weight = self.prior_gain
        if self.prior_resolution == "mask":
            fusable = weight.grad_scale in (None, 0) and not weight.needs_init()
        elif self.prior_impl == "roi_align":
            fusable = weight.fusable_in_roi_align
        else:  # the separate op takes the box features whole: no per-RoI choice of whose gradient reaches them
            fusable = weight.fusable and self.prior_grad_rois == "all"
        return fusable and not (self.prior_feature_norm or self.prior_every_conv or probed)

    # ----------------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def forward_test(self, features: list[Tensor], proposals: list[Tensor],
                     image_sizes: list[tuple[int, int]]) -> list[dict]:
        """Per image: `boxes Tensor[M, 4]`, `scores`, `labels`, `mask_probs Tensor[M, 28, 28]`, `priors Tensor[M, P, P]`
        (P = `prior_size`) in the coordinates of the (unpadded) input image."""
        box_feats, logits, deltas = self.box_head(self.pool(features, proposals, self.rc.box_pooler_resolution))
        probs = torch.softmax(logits.float(), dim=1)
        k = self.num_classes
        dets, rows, offset = [], [], 0
        for props, (h, w) in zip(proposals, image_sizes):
            n = props.shape[0]
            sc = probs[offset:offset + n, :k]
            boxes = clip_boxes(self.box_coder.decode(deltas[offset:offset + n], props).view(n, k, 4), h, w)
            finite = torch.isfinite(boxes).all(dim=2) & torch.isfinite(sc)
            r, c = torch.nonzero((sc > self.rc.score_thresh) & finite, as_tuple=True)
            b, s = boxes[r, c], sc[r, c]
            keep = batched_nms(b, s, c, self.rc.nms_thresh)[:self.rc.detections_per_image]
            dets.append({"boxes": b[keep], "scores": s[keep], "labels": c[keep]})
            rows.append(r[keep] + offset)  # the proposal (box-feature row) each detection came from
            offset += n
        self._attach_masks(features, dets, box_feats, torch.cat(rows))
        return dets

    def _attach_masks(self, features: list[Tensor], dets: list[dict], box_feats: Tensor, rows: Tensor) -> None:
        classes = torch.cat([d["labels"] for d in dets])
        res = self.prior_size
        if classes.numel() == 0:
            probs = box_feats.new_zeros((0, self.mask_size, self.mask_size), dtype=torch.float32)
            prior = box_feats.new_zeros((0, res, res), dtype=torch.float32)
        else:
            logits, prior = self.mask_forward(features, [d["boxes"] for d in dets], box_feats, classes, rows,
                                              return_prior=True)
            probs = logits.float().sigmoid()
        counts = [d["labels"].numel() for d in dets]
        for d, p, q in zip(dets, probs.split(counts), prior.float().split(counts)):
            d["mask_probs"], d["priors"] = p, q

    @torch.no_grad()
    def predict_for_boxes(self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]) -> list[dict]:
        """Masks and priors for given boxes and classes (oracle evaluation): the prior comes from each box's own box-head
        features, as in training."""
        box_feats, _, _ = self.box_head(self.pool(features, boxes, self.rc.box_pooler_resolution))
        dets = [{"boxes": b, "labels": l.to(torch.int64)} for b, l in zip(boxes, labels)]
        rows = torch.arange(box_feats.shape[0], device=box_feats.device)
        self._attach_masks(features, dets, box_feats, rows)
        return dets
