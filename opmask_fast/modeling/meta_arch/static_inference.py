"""OPMask inference with static shapes: one image batch in, padded detections and their count out, no host sync.

`OPMaskModel.detect` filters candidates and keeps lists of data-dependent length, so the host waits for the device
at every step. `StaticInference` computes the same detections with every shape known before the data is seen:

- the RPN takes a per-level top-k, gives invalid boxes (not finite, empty) the score -inf instead of dropping them,
  and keeps exactly `post_nms_topk_test` proposals per image with `nms_topk` (padded, with a count);
- the box head runs on all of them; class candidates below the score threshold (or from padded proposals) get -inf,
  and `nms_topk` per class keeps exactly `detections_per_image` detections, padded;
- the pooler assigns levels on the device and pools all of them in one launch (`multi_scale_roi_align(static=True)`).

The module exports with `torch.export` (image height and width dynamic) and compiles with
`torch.compile(fullgraph=True)`; on a GPU it can be captured as one CUDA graph. Masks are returned at 28x28 (and the
priors at `roi_heads.prior_size`), padded rows zero; with `paste=True` also pasted on the device into a
`Tensor[B, M, H, W]` bool output at the input size (chunks of a fixed number of detections, the same paste as
`OPMaskModel.postprocess`), padded rows all false. Run eagerly on CPU tensors, the mask branch skips the slots no image
of the batch fills (a host read costs nothing there); traced, or on a GPU, it runs on all M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opmask_fast.ops import nms_topk
from opmask_fast.ops._tracing import values_unreadable

from ..box_ops import clip_boxes, nonempty
from ..paste import paste_masks

# Detections pasted per step: the float32 intermediate is PASTE_CHUNK x H x W (about 64 MB at 800 x 1333).
PASTE_CHUNK = 16


class StaticInference(nn.Module):
    """Args:
        model: a built `OPMaskModel` (in eval mode: BatchNorm statistics are used, not measured).
        paste: also return `masks Tensor[B, M, H, W]` bool, the masks pasted at the input size.

    `forward(images)` with `images Tensor[B, 3, H, W]` float RGB in 0..255 (one size for the batch) returns, with
    M = `cfg.roi_heads.detections_per_image`: `boxes Tensor[B, M, 4]` in input pixels, `scores Tensor[B, M]`,
    `labels Tensor[B, M]` int64 (0..K-1), `mask_probs Tensor[B, M, 28, 28]`, `priors Tensor[B, M, P, P]` and
    `count Tensor[B]` int64: rows at and after `count[b]` are padding (score 0, label 0).
    """

    def __init__(self, model: nn.Module, *, paste: bool = False):
        super().__init__()
        self.model = model.eval()
        self.cfg = model.cfg
        self.paste = paste

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        # Shapes only (no data read, so export and CUDA graphs keep them): a 1-channel batch would broadcast silently.
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a Tensor[B, 3, H, W] (RGB), got {getattr(images, 'shape', type(images))}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images is empty: {tuple(images.shape)}")
        if self.model.training:  # BatchNorm would measure this batch and overwrite its statistics
            raise RuntimeError("StaticInference infers in eval mode and the model is in training mode: call "
                               "model.eval() (or StaticInference(model) again)")
        if images.is_floating_point():
            # On the device, without a host read (a NaN pixel would otherwise give no detection, silently).
            torch._assert_async(torch.isfinite(images).all(), "images has NaN or inf pixels")
        b, _, h, w = images.shape
        out = self.detect(self.model.backbone(self.normalize(images)), b, h, w)
        if self.paste:
            out["masks"] = self.paste_masks(out, h, w)
        return out

    def normalize(self, images: Tensor) -> Tensor:
        """`Tensor[B, 3, H', W']` float: the images in the model's pixel format, normalised and zero-padded to
        `size_divisibility`, as `OPMaskModel.preprocess` makes them."""
        m, cfg = self.model, self.cfg
        h, w = images.shape[-2:]
        x = images.float()
        if cfg.input_format == "BGR":
            x = x.flip(1)
        x = ((x - m.pixel_mean) / m.pixel_std).to(m.pixel_mean.dtype)  # a bf16 / fp16 model gets its own dtype
        # The padded size written as a multiple of d lets the tracer prove that every FPN level halves exactly.
        d = cfg.size_divisibility
        return F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))

    def paste_masks(self, out: dict[str, Tensor], h, w) -> Tensor:
        """`Tensor[B, M, h, w]` bool: each detection's mask probabilities pasted into its box (threshold
        `roi_heads.mask_threshold`), rows at and after `count` false; written chunk by chunk into one preallocated
        output, every shape fixed by M and the image size."""
        b, mm = out["scores"].shape
        masks = paste_masks(out["mask_probs"].flatten(0, 1), out["boxes"].reshape(-1, 4), h, w,
                            threshold=self.cfg.roi_heads.mask_threshold, chunk=PASTE_CHUNK).view(b, mm, h, w)
        real = torch.arange(mm, device=masks.device)[None, :] < out["count"][:, None]
        return masks & real[:, :, None, None]

    @torch.no_grad()
    def detect(self, features, b: int, h, w) -> dict[str, Tensor]:
        """`forward`'s padded outputs from the FPN features of B images of unpadded size (h, w). `forward` computes
        the features as `OPMaskModel.extract` does, so an evaluation that also needs them (the oracle pass) can run
        the backbone once and call this."""
        proposals, proposal_valid = self.proposals(features, b, h, w)
        box_feats, logits, deltas = self.box_forward(features, proposals)
        dets = self.detections(logits, deltas, proposals, proposal_valid, h, w)
        return self.mask_forward(features, box_feats, dets, proposals.shape[1])

    def box_forward(self, features: list[Tensor], proposals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The box head on every proposal slot `Tensor[B, P, 4]`: box features, class logits, box deltas."""
        heads = self.model.roi_heads
        return heads.box_head(heads.pool(features, list(proposals.unbind(0)), heads.rc.box_pooler_resolution))

    def mask_forward(self, features: list[Tensor], box_feats: Tensor, dets: dict[str, Tensor],
                     num_proposals: int) -> dict[str, Tensor]:
        """The mask branch (and the prior) on the detection slots of `detections`; returns `forward`'s outputs."""
        heads = self.model.roi_heads
        b = dets["boxes"].shape[0]
        k, mm = self.cfg.num_classes, dets["boxes"].shape[1]
        n = self._mask_slots(dets["count"], mm)
        # Each detection's prior comes from the box features of the proposal it was decoded from.
        offsets = (torch.arange(b, device=box_feats.device) * num_proposals)[:, None]
        rows = (dets["keep"][:, :n].clamp(min=0) // k + offsets).reshape(-1)
        side, res = heads.mask_size, heads.prior_size
        real = torch.arange(n, device=box_feats.device)[None, :] < dets["count"][:, None]  # (B, n)
        if n > 0 and heads.prior_tap is not None and heads.prior_tap._forward_hooks:
            # A probe of the prior (an ablation, statistics) must see the detections only, not the padding slots
            # (shuffled priors would come from padding boxes): the real rows alone, at the cost of a host read.
            if torch.compiler.is_compiling():
                raise RuntimeError("a prior probe (prior_ablation, prior_statistics) is attached: it reads the "
                                   "detection count on the host; export or compile StaticInference without it")
            counts = dets["count"].tolist()
            probs = box_feats.new_zeros((b, n, side, side), dtype=torch.float32)
            priors = box_feats.new_zeros((b, n, res, res), dtype=torch.float32)
            if sum(counts) > 0:  # as the dynamic path: no mask pass (and no probe call) without a detection
                mask_logits, prior_rows = heads.mask_forward(
                    features, [dets["boxes"][i, :c] for i, c in enumerate(counts)], box_feats,
                    dets["labels"][:, :n][real], rows.view(b, n)[real], return_prior=True)
                probs[real], priors[real] = mask_logits.float().sigmoid(), prior_rows.float()
        elif n > 0:
            mask_logits, priors = heads.mask_forward(features, list(dets["boxes"][:, :n].unbind(0)), box_feats,
                                                     dets["labels"][:, :n].reshape(-1), rows, return_prior=True)
            probs, priors = mask_logits.float().sigmoid().view(b, n, side, side), priors.float().view(b, n, res, res)
        else:
            probs, priors = box_feats.new_zeros((b, 0, side, side)), box_feats.new_zeros((b, 0, res, res))
        # Padded rows are zeros on every path, whatever the mask head made of the padding boxes.
        real = real[:, :, None, None]
        pad = (0, 0, 0, 0, 0, mm - n)
        return {"boxes": dets["boxes"], "scores": dets["scores"], "labels": dets["labels"],
                "mask_probs": F.pad(probs * real, pad), "priors": F.pad(priors * real, pad), "count": dets["count"]}

    @staticmethod
    def _mask_slots(count: Tensor, slots: int) -> int:
        """How many detection slots the mask branch runs on: all of them (static shapes, no host read), except for
        eager CPU tensors, where reading the largest count costs no device wait and the padded slots' convolutions
        would be real work: there it runs on the slots some image of the batch fills (not traced, nor under fake
        tensors: no value to read)."""
        if count.device.type != "cpu" or values_unreadable(count) or not count.numel():
            return slots
        return int(count.max())

    def proposals(self, features: list[Tensor], b: int, h, w) -> tuple[Tensor, Tensor]:
        """`Tensor[B, P, 4]` proposals (P = post_nms_topk_test) by objectness and `Tensor[B, P]` bool validity."""
        rpn = self.model.rpn
        rc = rpn.cfg
        anchors = rpn.anchor_generator(features)
        logits, deltas = rpn.head(features)
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (anc, lg, dl) in enumerate(zip(anchors, logits, deltas)):
            k = torch.sym_min(rc.pre_nms_topk_test, lg.shape[1])
            scores, idx = lg.float().topk(k, dim=1)  # (B, k), sorted
            sel = dl.gather(1, idx[..., None].expand(b, k, 4)).reshape(-1, 4)
            boxes_l.append(rpn.box_coder.decode(sel, anc[idx.reshape(-1)]).view(b, k, 4))
            scores_l.append(scores)
            level_l.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
        boxes, scores, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(level_l)
        out_boxes, out_valid = [], []
        for i in range(b):
            bx, sc = boxes[i], scores[i]
            valid = torch.isfinite(bx).all(dim=1) & torch.isfinite(sc)
            bx = clip_boxes(torch.where(valid[:, None], bx, torch.zeros_like(bx)), h, w)
            valid = valid & nonempty(bx, rc.min_box_size)
            keep, count = nms_topk(bx, sc.masked_fill(~valid, float("-inf")), rc.nms_thresh, rc.post_nms_topk_test,
                                   levels, validate=False)
            out_boxes.append(bx[keep.clamp(min=0)])
            out_valid.append(torch.arange(keep.shape[0], device=keep.device) < count)
        return torch.stack(out_boxes), torch.stack(out_valid)

    def detections(self, logits: Tensor, deltas: Tensor, proposals: Tensor, proposal_valid: Tensor, h,
                   w) -> dict[str, Tensor]:
        """Per image the `detections_per_image` best class candidates after per-class NMS, padded: `boxes`,
        `scores`, `labels`, `keep` (candidate index, proposal * K + class; -1 in padding) and `count`."""
        heads = self.model.roi_heads
        rc, k = heads.rc, heads.num_classes
        b, p = proposal_valid.shape
        probs = torch.softmax(logits.float(), dim=1)[:, :k].view(b, p, k)
        boxes = clip_boxes(heads.box_coder.decode(deltas, proposals.reshape(-1, 4)).view(b, p, k, 4), h, w)
        valid = (probs > rc.score_thresh) & torch.isfinite(boxes).all(dim=3) & torch.isfinite(probs) & \
            proposal_valid[:, :, None]
        # Candidates in (proposal, class) row-major order, as the dynamic path's nonzero lists them.
        cand_boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes)).view(b, p * k, 4)
        cand_scores = probs.masked_fill(~valid, float("-inf")).view(b, p * k)
        classes = torch.arange(k, device=probs.device).repeat(p)
        out = {"boxes": [], "scores": [], "labels": [], "keep": [], "count": []}
        for i in range(b):
            keep, count = nms_topk(cand_boxes[i], cand_scores[i], rc.nms_thresh, rc.detections_per_image, classes,
                                   validate=False)
            real = torch.arange(keep.shape[0], device=keep.device) < count
            sel = keep.clamp(min=0)
            out["boxes"].append(cand_boxes[i][sel] * real[:, None])
            out["scores"].append(torch.where(real, cand_scores[i][sel], torch.zeros_like(cand_scores[i][sel])))
            out["labels"].append(torch.where(real, sel % k, torch.zeros_like(sel)))
            out["keep"].append(keep)
            out["count"].append(count)
        return {key: torch.stack(v) for key, v in out.items()}


__all__ = ["StaticInference"]
