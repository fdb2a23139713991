"""OPMask: Mask R-CNN (ResNet-FPN, RPN, 4-conv box head, class-agnostic mask head) with the object mask prior.
With `cfg.use_prior=False` the same model is the paper's Mask R-CNN baseline."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..backbone import FPN, ResNet
from ..box_ops import clip_boxes
from ..paste import paste_masks
from ..proposal_generator import RPN
from ..roi_heads import RoIHeads
from ..weights import load_backbone_weights


class OPMaskModel(nn.Module):
    """Build with `opmask_fast.modeling.build_model(cfg)`.

    Training: `model(images, targets) -> {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}`.
    Inference: `model(images, output_sizes=None) -> list[dict]` with `boxes Tensor[M, 4]`, `scores Tensor[M]`,
    `labels Tensor[M]` int64, `masks Tensor[M, h, w]` bool, `mask_probs Tensor[M, 28, 28]`, `priors Tensor[M, P, P]`
    (P = `roi_heads.prior_size`: 7, or 14 with `prior_resolution="mask"`).
    `images` is a list of `Tensor[3, H_i, W_i]` float RGB in 0..255; normalisation, padding and batching happen here.
    """

    def __init__(self, *, cfg):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        bc = cfg.backbone
        resnet = ResNet(depth=bc.depth, norm=bc.norm, freeze_at=bc.freeze_at, stride_in_1x1=bc.stride_in_1x1,
                        width=bc.width)
        self.backbone = FPN(bottom_up=resnet, out_channels=bc.fpn_channels)
        self.rpn = RPN(cfg=cfg.rpn, channels=bc.fpn_channels, strides=FPN.strides)
        self.roi_heads = RoIHeads(cfg=cfg, in_channels=bc.fpn_channels)
        # Not saved in checkpoints: they come from the config, so a checkpoint cannot silently override them.
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)

    def load_backbone_weights(self, path: str) -> str:
        """Load ImageNet weights for the ResNet from a local file (see `opmask_fast.modeling.weights`)."""
        fmt = load_backbone_weights(self.backbone.bottom_up, path)
        bottleneck = self.cfg.backbone.depth >= 50
        if bottleneck and fmt == "torchvision" and self.cfg.backbone.stride_in_1x1:
            warnings.warn("torchvision ResNet weights put the stride in the 3x3 conv; set backbone.stride_in_1x1=False "
                          "(opmask_fast.config.with_torchvision_weights does)", stacklevel=2)
        if bottleneck and fmt == "caffe2" and not self.cfg.backbone.stride_in_1x1:
            warnings.warn("MSRA weights put the stride in the 1x1 conv; set backbone.stride_in_1x1=True", stacklevel=2)
        return fmt

    # ------------------------------------------------------------------------------------------------------- inputs
    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """list of `Tensor[3, H_i, W_i]` RGB 0..255 -> (`Tensor[N, 3, H, W]` normalised, zero-padded to a multiple of
        `size_divisibility`, and the unpadded sizes)."""
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of Tensor[3, H, W]")
        for i, im in enumerate(images):
            if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"images[{i}] must be a Tensor[3, H, W] (RGB), got {getattr(im, 'shape', type(im))}")
            if im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}] is empty: {tuple(im.shape)}")
            if not self.training and im.is_floating_point() and not bool(torch.isfinite(im).all()):
                # (training leaves it to the loss check: no host sync per step)
                raise ValueError(f"images[{i}] has NaN or inf pixels")
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.cfg.size_divisibility
        hp = max(h for h, _ in sizes) + (-max(h for h, _ in sizes)) % d
        wp = max(w for _, w in sizes) + (-max(w for _, w in sizes)) % d
        batch = self.pixel_mean.new_zeros((len(images), 3, hp, wp))
        for i, im in enumerate(images):
            x = im.to(device=batch.device, dtype=torch.float32)
            if self.cfg.input_format == "BGR":
                x = x.flip(0)
            batch[i, :, :x.shape[1], :x.shape[2]] = (x - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def _check_targets(self, targets: list[dict] | None, sizes: list[tuple[int, int]]) -> list[dict]:
        if targets is None or len(targets) != len(sizes):
            raise ValueError("training needs one target dict per image (boxes, labels, masks, has_mask)")
        out = []
        k = self.cfg.num_classes
        for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
            boxes, labels = t.get("boxes"), t.get("labels")
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"targets[{i}]['boxes'] must be a Tensor[N, 4], got {getattr(boxes, 'shape', boxes)}")
            n = boxes.shape[0]
            if not isinstance(labels, Tensor) or labels.shape != (n,):
                raise ValueError(f"targets[{i}]['labels'] must be a Tensor[{n}]")
            if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise ValueError(f"targets[{i}]['labels'] must lie in 0..{k - 1} (background is implicit)")
            has_mask = t.get("has_mask")
            has_mask = torch.ones(n, dtype=torch.bool) if has_mask is None else has_mask.bool()
            masks = t.get("masks")
            if masks is None:
                if bool(has_mask.any()):
                    raise ValueError(f"targets[{i}] marks instances has_mask=True but holds no 'masks'")
            elif masks.shape != (n, h, w):
                raise ValueError(f"targets[{i}]['masks'] must be Tensor[{n}, {h}, {w}] (the image size), "
                                 f"got {tuple(masks.shape)}")
            dev = self.pixel_mean.device
            out.append({"boxes": boxes.to(dev, torch.float32), "labels": labels.to(dev, torch.int64),
                        "masks": None if masks is None else masks.to(dev), "has_mask": has_mask.to(dev)})
        return out

    # ------------------------------------------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict] | None = None,
                output_sizes: list[tuple[int, int]] | None = None):
        batch, sizes = self.preprocess(images)
        if self.training:
            targets = self._check_targets(targets, sizes)
            features = self.backbone(batch)
            proposals, losses = self.rpn(features, sizes, [t["boxes"] for t in targets])
            images_rgb = None
            if self.cfg.roi_heads.weak_mask_loss == "box_projection_pairwise":  # the pairwise term reads colours
                images_rgb = batch * self.pixel_std + self.pixel_mean
                if self.cfg.input_format == "BGR":
                    images_rgb = images_rgb.flip(1)
            losses.update(self.roi_heads.forward_train(features, proposals, targets, images=images_rgb))
            return losses
        return self.detect((self.backbone(batch), sizes), output_sizes)

    def extract(self, images: list[Tensor]) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
        """The FPN features of `images` and their unpadded sizes: pass them to `detect` and to
        `predict_masks_for_boxes(extracted=...)` to run both on one backbone pass (the evaluation's oracle boxes)."""
        batch, sizes = self.preprocess(images)
        return self.backbone(batch), sizes

    def detect(self, extracted: tuple[dict[str, Tensor], list[tuple[int, int]]],
               output_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """Inference from `extract`'s output: what `model(images, output_sizes=...)` returns in eval mode."""
        features, sizes = extracted
        proposals, _ = self.rpn(features, sizes)
        dets = self.roi_heads.forward_test(features, proposals, sizes)
        return self.postprocess(dets, sizes, output_sizes)

    @torch.no_grad()
    def predict_masks_for_boxes(self, images: list[Tensor], boxes: list[Tensor], labels: list[Tensor],
                                output_sizes: list[tuple[int, int]] | None = None, *,
                                extracted: tuple[dict[str, Tensor], list[tuple[int, int]]] | None = None
                                ) -> list[dict]:
        """Masks for given boxes and classes (e.g. GT, for oracle mask quality and the prior's own AP).

        Args:
            boxes: per image `Tensor[M_i, 4]` xyxy in the coordinates of `images[i]`; labels: `Tensor[M_i]` in 0..K-1.
            output_sizes: (h, w) to paste into (boxes are scaled like detections); default the input size.
            extracted: `extract(images)` of these images, computed before (in eval mode): the backbone is not run again.
        Returns:
            per image `boxes`, `labels`, `masks Tensor[M_i, h, w]` bool, `mask_probs Tensor[M_i, 28, 28]`,
            `priors Tensor[M_i, P, P]`.
        """
        if len(boxes) != len(images) or len(labels) != len(images):
            raise ValueError("predict_masks_for_boxes needs one boxes and one labels tensor per image")
        was_training = self.training
        if was_training:  # train()/eval() walk every module: ~1 ms a call, per image of an oracle pass
            self.eval()
        try:
            if extracted is None:
                batch, sizes = self.preprocess(images)
                features = self.backbone(batch)
            else:
                features, sizes = extracted
                if len(sizes) != len(images):
                    raise ValueError(f"extracted holds {len(sizes)} images' features for {len(images)} images")
            dev = self.pixel_mean.device
            dets = self.roi_heads.predict_for_boxes(features, [b.to(dev, torch.float32) for b in boxes],
                                                    [l.to(dev) for l in labels])
            for d in dets:
                d["scores"] = torch.ones(d["labels"].shape, device=dev)
            return self.postprocess(dets, sizes, output_sizes)
        finally:
            if was_training:
                self.train()

    def postprocess(self, dets: list[dict], sizes: list[tuple[int, int]],
                    output_sizes: list[tuple[int, int]] | None) -> list[dict]:
        """Scale boxes to the output size and paste the masks there (in float32, whatever the autocast state)."""
        if output_sizes is not None and len(output_sizes) != len(sizes):
            raise ValueError(f"output_sizes needs one (h, w) per image, got {len(output_sizes)} for {len(sizes)}")
        if output_sizes is not None and not all(len(s) == 2 and min(int(v) for v in s) >= 1 for s in output_sizes):
            raise ValueError(f"output_sizes must be (h, w) pairs of positive ints, got {list(output_sizes)}")
        out = []
        for i, (d, (h, w)) in enumerate(zip(dets, sizes)):
            oh, ow = (h, w) if output_sizes is None else (int(output_sizes[i][0]), int(output_sizes[i][1]))
            boxes = d["boxes"].float()
            if (oh, ow) != (h, w):
                scale = boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
                boxes = clip_boxes(boxes * scale, oh, ow)
            # (paste_masks pastes in float32 under autocast too)
            masks = paste_masks(d["mask_probs"], boxes, oh, ow, threshold=self.cfg.roi_heads.mask_threshold)
            out.append({"boxes": boxes, "scores": d["scores"].float(), "labels": d["labels"], "masks": masks,
                        "mask_probs": d["mask_probs"], "priors": d["priors"]})
        return out
