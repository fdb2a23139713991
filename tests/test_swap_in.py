"""The object mask prior swapped into torchvision's Mask R-CNN: training forward + backward and inference (CPU)."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from opmask_fast.ops.swap_in import PriorRoIHeads, add_object_mask_prior  # noqa: E402

NUM_CLASSES = 4  # torchvision counts the background (index 0)


class TinyBackbone(nn.Module):
    out_channels = 8

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())

    def forward(self, x):
        return OrderedDict([("0", self.body(x))])


def tiny_model():
    torch.manual_seed(0)
    # A stock torchvision Mask R-CNN (its MLP box head is what add_object_mask_prior replaces).
    model = MaskRCNN(TinyBackbone(), min_size=64, max_size=64,
                     box_head=TwoMLPHead(8 * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, NUM_CLASSES),
                     rpn_anchor_generator=AnchorGenerator(((16, 32),), ((1.0,),)),
                     box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                     mask_head=MaskRCNNHeads(8, (16, 16), 1), mask_predictor=MaskRCNNPredictor(16, 16, NUM_CLASSES),
                     rpn_batch_size_per_image=32, box_batch_size_per_image=32)
    return add_object_mask_prior(model, box_channels=(16, 32))


def images_and_targets():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = []
    for boxes, labels in (([[4, 4, 40, 40], [30, 20, 60, 62]], [1, 2]), ([[10, 8, 50, 30]], [3])):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), 64, 64, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks})
    return images, targets


def test_training_forward_backward_reaches_box_head_through_prior():
    model = tiny_model().train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"}
    assert all(torch.isfinite(v) for v in losses.values())
    heads = model.roi_heads
    losses["loss_mask"].backward(retain_graph=True)
    # The mask loss reaches the box head's convs through the prior; the classifier weight is detached.
    assert heads.box_head.convs[0].weight.grad.abs().sum() > 0
    assert heads.box_predictor.cls_score.weight.grad is None
    sum(losses.values()).backward()
    assert heads.box_predictor.cls_score.weight.grad is not None


def test_inference_masks_and_detection_rows():
    model = tiny_model().eval()
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep detections so the mask branch runs
    images, _ = images_and_targets()
    with torch.no_grad():
        out = model(images)
    assert sum(len(o["boxes"]) for o in out) > 0
    for o in out:
        assert o["masks"].shape == (len(o["boxes"]), 1, 64, 64)
        assert torch.isfinite(o["masks"]).all()

    # postprocess_with_rows returns torchvision's detections plus the proposal each one came from.
    heads: PriorRoIHeads = model.roi_heads
    g = torch.Generator().manual_seed(1)
    proposals = [torch.tensor([[2.0, 2, 30, 30], [10, 10, 50, 60], [0, 5, 20, 40]]), torch.tensor([[5.0, 5, 40, 40]])]
    logits, deltas = torch.randn(4, NUM_CLASSES, generator=g), torch.randn(4, 4 * NUM_CLASSES, generator=g) * 0.1
    shapes = [(64, 64), (64, 64)]
    boxes, scores, labels, rows = heads.postprocess_with_rows(logits, deltas, proposals, shapes)
    ref_boxes, ref_scores, ref_labels = heads.postprocess_detections(logits, deltas, proposals, shapes)
    decoded = heads.box_coder.decode(deltas, proposals)  # (4, classes, 4)
    for i in range(2):
        torch.testing.assert_close(boxes[i], ref_boxes[i])
        torch.testing.assert_close(scores[i], ref_scores[i])
        assert torch.equal(labels[i], ref_labels[i])
        expected = decoded[rows[i], labels[i]].clamp(0, 64)
        torch.testing.assert_close(boxes[i], expected)
