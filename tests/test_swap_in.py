"""The object mask prior swapped into torchvision's Mask R-CNN: training forward + backward and inference (CPU)."""

import copy
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


def tiny_model(scale="none"):
    torch.manual_seed(0)
    # A stock torchvision Mask R-CNN (its MLP box head is what add_object_mask_prior replaces).
    model = MaskRCNN(TinyBackbone(), min_size=64, max_size=64,
                     box_head=TwoMLPHead(8 * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, NUM_CLASSES),
                     rpn_anchor_generator=AnchorGenerator(((16, 32),), ((1.0,),)),
                     box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                     mask_head=MaskRCNNHeads(8, (16, 16), 1), mask_predictor=MaskRCNNPredictor(16, 16, NUM_CLASSES),
                     rpn_batch_size_per_image=32, box_batch_size_per_image=32)
    return add_object_mask_prior(model, box_channels=(16, 32), scale=scale)


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


def test_a_predictor_replaced_after_the_swap_is_the_one_the_prior_reads():
    """torchvision's fine-tuning recipe replaces box_predictor after the model is built: the prior must read the new
    classifier, the one in the model's parameters and state_dict (a reference kept from the swap would be neither)."""
    model = tiny_model().eval()
    model.roi_heads.score_thresh = 0.0
    images, _ = images_and_targets()
    torch.manual_seed(1)
    model.roi_heads.box_predictor = FastRCNNPredictor(32, NUM_CLASSES + 2)  # the recipe: new classes, new predictors
    model.roi_heads.mask_predictor = MaskRCNNPredictor(16, 16, NUM_CLASSES + 2)
    with torch.no_grad():
        out = model(images)
    masks_before = torch.cat([o["masks"] for o in out])
    assert masks_before.numel() > 0
    # The same model through its state_dict (another init first): every mask reproduced.
    copy_ = tiny_model().eval()
    copy_.roi_heads.score_thresh = 0.0
    copy_.roi_heads.box_predictor = FastRCNNPredictor(32, NUM_CLASSES + 2)
    copy_.roi_heads.mask_predictor = MaskRCNNPredictor(16, 16, NUM_CLASSES + 2)
    copy_.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([o["masks"] for o in copy_(images)]), masks_before)
    model.train()
    losses = model(*images_and_targets())
    assert torch.isfinite(losses["loss_mask"])


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


class _MaskBranch(nn.Module):
    """The swapped-in mask branch from pooled features to mask logits: torchvision's pooler, our prior, the mask head."""

    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, features, boxes, box_map, classes, rows):
        h = self.heads
        mask_features = h.mask_roi_pool(features, [boxes], [(64, 64)])
        prior = h.prior(mask_features, box_map, classes, rows, h.box_predictor.cls_score.weight)
        return h.mask_predictor(h.mask_head(prior))


def test_learnable_gain_in_training_exports_and_compiles_without_a_host_read():
    """The learnable gain, once measured (`initialize`, eager), is a parameter like any other: a training-mode branch
    exports and compiles with fullgraph=True, and a state dict loaded into a fresh model carries the measured state.
    Fails if the traced call reads the `initialized` buffer on the host (a data-dependent guard)."""
    model = tiny_model("learnable").train()
    heads = model.roi_heads
    g = torch.Generator().manual_seed(3)
    args = (OrderedDict([("0", torch.randn(1, 8, 16, 16, generator=g))]),
            torch.tensor([[2.0, 2, 30, 30], [10, 10, 50, 60]]), torch.randn(4, 32, 7, 7, generator=g),
            torch.tensor([1, 3]), torch.tensor([3, 0]))
    branch = _MaskBranch(heads)
    first = branch(*args)  # eager: measures the gain
    weights = [m for m in model.modules() if type(m).__name__ == "PriorWeight"]
    assert weights and all(bool(w.initialized) and not w.needs_init() for w in weights)
    eager = branch(*args)
    torch.testing.assert_close(eager, first)
    ep = torch.export.export(branch, args, strict=False)
    torch.testing.assert_close(ep.module()(*args), eager)
    fresh = tiny_model("learnable").train()
    fresh.load_state_dict(model.state_dict())
    compiled = torch.compile(_MaskBranch(fresh.roi_heads), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), eager)


class _OurOps(nn.Module):
    """Our ops called from another module (not where they are defined): pooler, RoIAlign, NMS."""

    def forward(self, p2, p3, boxes, scores):
        from opmask_fast.ops import batched_nms, multi_scale_roi_align, nms, roi_align

        pooled = multi_scale_roi_align([p2, p3], [boxes], 5, spatial_scales=[0.25, 0.125])
        direct = roi_align(p2, [boxes], 3, 0.25, 0, True)
        keep = nms(boxes, scores, 0.5)
        per_class = batched_nms(boxes, scores, (scores * 3).long(), 0.5)
        return pooled.sum((2, 3)), direct.mean(), keep, per_class


@pytest.mark.parametrize("scale", ["none", "feature_std"])
def test_fx_traces_and_exports_with_our_ops(scale):
    """torch.fx.symbolic_trace traces the swapped-in mask branch (torchvision's fx-wrapped pooler, our prior, fused
    or weighted per RoI by the mask features) and a module calling our ops from elsewhere, each op one graph node; the
    GraphModule and a torch.export of the branch give the eager outputs. Fails if an op's value checks run on fx
    Proxies (the ops are not leaves)."""
    model = tiny_model(scale).eval()
    heads = model.roi_heads
    g = torch.Generator().manual_seed(2)
    features = OrderedDict([("0", torch.randn(1, 8, 16, 16, generator=g))])
    boxes = torch.tensor([[2.0, 2, 30, 30], [10, 10, 50, 60], [0, 5, 20, 40]])
    box_map = torch.randn(5, 32, 7, 7, generator=g)
    classes, rows = torch.tensor([1, 3, 2]), torch.tensor([4, 0, 2])
    branch = _MaskBranch(heads)
    # torchvision's pooler caches its scales at its first call (a Proxy when traced): trace a fresh copy.
    traced = torch.fx.symbolic_trace(copy.deepcopy(branch))
    with torch.no_grad():
        eager = branch(features, boxes, box_map, classes, rows)
    targets = {getattr(n.target, "__name__", str(n.target)) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"object_prior_add", "object_prior"} & targets
    with torch.no_grad():
        torch.testing.assert_close(traced(features, boxes, box_map, classes, rows), eager)
        ep = torch.export.export(branch, (features, boxes, box_map, classes, rows), strict=False)
        torch.testing.assert_close(ep.module()(features, boxes, box_map, classes, rows), eager)

    ops = _OurOps()
    p2, p3 = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    scores = torch.rand(3, generator=g)
    traced_ops = torch.fx.symbolic_trace(ops)
    names = [getattr(n.target, "__name__", "") for n in traced_ops.graph.nodes if n.op == "call_function"]
    assert {"multi_scale_roi_align", "roi_align", "nms", "batched_nms"} <= set(names)
    for got, want in zip(traced_ops(p2, p3, boxes, scores), ops(p2, p3, boxes, scores)):
        assert torch.equal(got, want)
