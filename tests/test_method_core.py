"""The method's core, each part checked so that a small plausible bug in it fails a test (issue 26):

- mixed batches: strong and weak instances in one image and across images; weak RoIs never get the mask BCE, and with
  ``weak_mask_loss="box_projection"`` only weak RoIs get the projection term, against their own GT boxes;
- per-image routing of the prior: each RoI's (training) and each detection's (inference, oracle boxes) prior comes from
  its own image's box-head features;
- pixel conventions: the mask targets and the pooler are RoIAlign with ``aligned=True`` (half-pixel) and adaptive
  sampling, on the right FPN level.

Every docstring names the hand-made bug the test was seen to fail on.
"""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from torchvision.ops import roi_align as tv_roi_align

from opmask_fast.modeling.roi_heads.mask_head import box_projection_loss, mask_targets
from opmask_fast.ops import object_prior

from test_model import _cfg, _model

H, W = 96, 112


def _image(seed):
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(seed)) * 255


def _two_images():
    """Two images of one size (no extra batch padding), each with a strong and a weak instance, in opposite orders:
    A = [strong, weak], B = [weak, strong]. Weak instances carry a zero mask, as the datasets give them."""
    a_boxes = torch.tensor([[8.0, 10.0, 50.0, 70.0], [40.0, 30.0, 100.0, 90.0]])
    a_masks = torch.zeros(2, H, W, dtype=torch.uint8)
    a_masks[0, 15:65, 12:45] = 1
    b_boxes = torch.tensor([[5.0, 40.0, 60.0, 92.0], [62.0, 6.0, 108.0, 60.0]])
    b_masks = torch.zeros(2, H, W, dtype=torch.uint8)
    b_masks[1, 10:55, 66:104] = 1
    b_masks[1, 30:55, 66:80] = 0  # not box-filling: the mask content matters
    ta = {"boxes": a_boxes, "labels": torch.tensor([0, 2]), "masks": a_masks, "has_mask": torch.tensor([True, False])}
    tb = {"boxes": b_boxes, "labels": torch.tensor([1, 0]), "masks": b_masks, "has_mask": torch.tensor([False, True])}
    return [_image(1), _image(2)], [ta, tb]


def _with_mask(targets, image, instance, fill):
    out = [{k: v.clone() for k, v in t.items()} for t in targets]
    m = out[image]["masks"][instance]
    x0, y0, x1, y1 = out[image]["boxes"][instance].long().tolist()
    if fill == "ones":
        m[y0:y1, x0:x1] = 1
    else:  # "shift": the same shape moved by 6 pixels inside its box
        m[y0:y1, x0:x1] = torch.roll(m[y0:y1, x0:x1], shifts=(6, 6), dims=(0, 1))
        assert not torch.equal(m, targets[image]["masks"][instance])
    return out


def _proposals(targets, seed=0):
    """Per image: jittered GT boxes (foreground RoIs that are not the GT box) and boxes anywhere (mostly background)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in targets:
        n = t["boxes"].shape[0]
        fg = t["boxes"].repeat(4, 1) + (torch.rand(4 * n, 4, generator=g) - 0.5) * 8
        xy = torch.rand(10, 2, generator=g) * 60
        out.append(torch.cat([fg, torch.cat([xy, xy + 8 + torch.rand(10, 2, generator=g) * 40], 1)]))
    return out


def _features(model, images):
    """FPN features of `images` (computed once, outside the graph) and the images' sizes."""
    with torch.no_grad():
        batch, sizes = model.preprocess(images)
        return model.backbone(batch), sizes


def _head_losses(model, features, sizes, targets):
    """The RoI heads' training losses (`RoIHeads.forward_train`, as `model(images, targets)` calls it) on fixed
    features and proposals: the mask branch is all that changes between calls."""
    torch.manual_seed(7)  # the RoI sampling draws from the global generator
    return model.roi_heads.forward_train(features, _proposals(targets), model._check_targets(targets, sizes))


def _spy_mask_forward(model):
    """Records the arguments and the logits of every `RoIHeads.mask_forward` call (the logits stay in the graph)."""
    rh, seen = model.roi_heads, {}
    original = rh.mask_forward

    def spy(features, boxes, box_feats, classes, rows, **kw):
        logits, prior = original(features, boxes, box_feats, classes, rows, **kw)
        seen.update(boxes=[b.detach().clone() for b in boxes], classes=classes.clone(), rows=rows.clone(),
                    box_feats=box_feats, logits=logits)
        return logits, prior

    rh.mask_forward = spy
    return seen


def _train_model(cfg):
    model = _model(cfg).train()
    with torch.no_grad():  # mask logits far from 0 (the predictor starts at std 0.001): the BCE then reads the targets
        model.roi_heads.mask_head.predictor.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return model


def _mask_params(model):
    return list(model.roi_heads.mask_head.parameters()) + [c[0].weight for c in model.roi_heads.box_head.convs]


# ------------------------------------------------------------------------------------------------ 1. mixed batches
def test_weak_mask_content_never_reaches_the_mask_loss_in_mixed_batches():
    """One image and a two-image batch mixing strong and weak instances (the RoI heads' forward_train on fixed features
    and proposals, sampling seeded): filling a weak instance's mask changes neither loss_mask nor its gradients (mask
    head, box-head convs); moving a strong one's (in either image) changes loss_mask.

    Fails on: `mask_loss` taking the BCE over every RoI (`logits` instead of `logits[supervised]`); `forward_train`
    taking `has_mask` from the first image for all (`targets[0]["has_mask"]`); `supervised` set to all True."""
    model = _train_model(_cfg())
    images, targets = _two_images()
    for imgs, tgts in ((images[:1], targets[:1]), (images, targets)):
        features, sizes = _features(model, imgs)
        base = _head_losses(model, features, sizes, tgts)
        assert base["loss_mask"].item() > 0
        base_grads = torch.autograd.grad(base["loss_mask"], _mask_params(model))
        for image in range(len(imgs)):
            weak = int((~tgts[image]["has_mask"]).nonzero()[0])
            strong = int(tgts[image]["has_mask"].nonzero()[0])
            # a weak instance's (zero) mask filled in: nothing of the mask loss may move
            changed = _head_losses(model, features, sizes, _with_mask(tgts, image, weak, "ones"))
            assert changed["loss_mask"].item() == base["loss_mask"].item(), (len(imgs), image, "weak")
            grads = torch.autograd.grad(changed["loss_mask"], _mask_params(model))
            for g0, g1 in zip(base_grads, grads):
                torch.testing.assert_close(g1, g0, rtol=0, atol=0)
            moved = _head_losses(model, features, sizes, _with_mask(tgts, image, strong, "shift"))
            assert abs(moved["loss_mask"].item() - base["loss_mask"].item()) > 1e-3, (len(imgs), image, "strong")


def _matched(boxes, targets):
    """(image, matched GT index) of each mask RoI, by IoU as the matcher does, independently of the model."""
    out = []
    for i, (b, t) in enumerate(zip(boxes, targets)):
        iou = box_iou(b, t["boxes"])
        best, gi = iou.max(dim=1)
        assert (best >= 0.5).all()  # foreground RoIs only
        out += [(i, int(g)) for g in gi]
    return out


def test_mask_losses_of_a_mixed_batch_equal_their_definition():
    """Two images, each mixing strong and weak RoIs, with `weak_mask_loss="box_projection"`: loss_mask is the BCE over
    the strong RoIs only (targets: the matched GT mask by RoIAlign, aligned) and loss_mask_box the projection term over
    the weak RoIs only against their matched GT boxes; d loss_mask / d logits is zero on weak RoIs, d loss_mask_box /
    d logits zero on strong ones.

    Fails on: `box_projection_loss(..., supervised_t)` (strong RoIs instead of weak); the projection term against the
    RoI boxes instead of the GT boxes (`gt_boxes.append(b)`); `mask_loss` over every RoI."""
    cfg = _cfg()
    cfg.roi_heads.weak_mask_loss = "box_projection"
    model = _train_model(cfg)
    images, targets = _two_images()
    seen = _spy_mask_forward(model)
    losses = _head_losses(model, *_features(model, images), targets)
    logits, boxes = seen["logits"], seen["boxes"]
    where = _matched(boxes, targets)
    rois = torch.cat(boxes)
    weak = torch.tensor([not bool(targets[i]["has_mask"][g]) for i, g in where])
    # the batch is mixed in every image: each image has strong and weak mask RoIs
    for i in range(2):
        kinds = {bool(w) for (j, _), w in zip(where, weak) if j == i}
        assert kinds == {True, False}, i
    gt_boxes = torch.stack([targets[i]["boxes"][g] for i, g in where])
    masks = torch.stack([targets[i]["masks"][g].float() for i, g in where])
    rois5 = torch.cat([torch.arange(len(where), dtype=torch.float32)[:, None], rois], dim=1)
    tgt = (tv_roi_align(masks[:, None], rois5, (28, 28), 1.0, 0, aligned=True)[:, 0] >= 0.5).float()
    want_mask = F.binary_cross_entropy_with_logits(logits[~weak].detach(), tgt[~weak])
    torch.testing.assert_close(losses["loss_mask"].detach(), want_mask, rtol=1e-5, atol=1e-6)
    want_box = box_projection_loss(logits.detach(), rois, gt_boxes, weak)
    torch.testing.assert_close(losses["loss_mask_box"].detach(), want_box, rtol=1e-5, atol=1e-6)
    assert abs(float(want_box) - float(box_projection_loss(logits.detach(), rois, rois, weak))) > 1e-3
    g_mask = torch.autograd.grad(losses["loss_mask"], logits, retain_graph=True)[0]
    g_box = torch.autograd.grad(losses["loss_mask_box"], logits)[0]
    per_roi = lambda g: g.abs().flatten(1).sum(1)  # noqa: E731
    assert (per_roi(g_mask)[weak] == 0).all() and (per_roi(g_mask)[~weak] > 0).all()
    assert (per_roi(g_box)[~weak] == 0).all() and (per_roi(g_box)[weak] > 0).all()


# ---------------------------------------------------------------------------------------- 2. per-image prior routing
def _eval_model(**kw):
    model = _model(_cfg(prior_scale=3.0, **kw), seed=2).eval()  # eval: BatchNorm on running statistics, per RoI
    with torch.no_grad():  # a random model detects little: lower the bar so detections exist in both images
        model.roi_heads.box_head.cls_score.bias[:-1] += 3.0
    return model


_ORACLE_BOXES = [torch.tensor([[8.0, 10.0, 50.0, 70.0], [40.0, 30.0, 100.0, 90.0]]),
                 torch.tensor([[5.0, 40.0, 60.0, 92.0], [62.0, 6.0, 108.0, 60.0], [20.0, 20.0, 70.0, 60.0]])]
_ORACLE_LABELS = [torch.tensor([0, 2]), torch.tensor([1, 0, 2])]


def test_oracle_priors_come_from_each_images_own_features():
    """`predict_masks_for_boxes` on [A, B]: B's priors and masks equal those of [B] alone, A's those of [A] alone, and
    [B, A] swaps them.

    Fails on: `predict_for_boxes` numbering the box-feature rows per image (`torch.cat([torch.arange(len(b)) ...])`:
    B's boxes take A's features) or off by one (`rows = torch.arange(1, n + 1) % n`)."""
    model = _eval_model()
    images = [_image(1), _image(2)]
    alone = [model.predict_masks_for_boxes([images[i]], [_ORACLE_BOXES[i]], [_ORACLE_LABELS[i]])[0] for i in (0, 1)]
    both = model.predict_masks_for_boxes(images, _ORACLE_BOXES, _ORACLE_LABELS)
    swapped = model.predict_masks_for_boxes(images[::-1], _ORACLE_BOXES[::-1], _ORACLE_LABELS[::-1])
    for i in (0, 1):
        for key in ("priors", "mask_probs"):
            torch.testing.assert_close(both[i][key], alone[i][key], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(swapped[1 - i][key], alone[i][key], rtol=1e-4, atol=1e-5)
    # the two images' priors differ, so taking the other image's rows cannot pass by chance
    assert not torch.allclose(alone[0]["priors"], alone[1]["priors"][:2], atol=1e-2)


def test_detection_priors_come_from_each_images_own_features():
    """Inference on [A, B]: each image's detections (boxes, labels, scores, priors, masks) equal those of the image
    alone, and [B, A] gives them swapped.

    Fails on: `forward_test` forgetting the image offset of the box-feature rows (`rows.append(r[keep])`) or adding
    a wrong one (`r[keep] + offset + 1`)."""
    model = _eval_model()
    images = [_image(1), _image(2)]
    with torch.no_grad():
        alone = [model([im])[0] for im in images]
        both, swapped = model(images), model(images[::-1])
    assert all(a["labels"].numel() > 5 for a in alone)
    for i in (0, 1):
        for got in (both[i], swapped[1 - i]):
            assert torch.equal(got["labels"], alone[i]["labels"])
            for key in ("boxes", "scores", "priors", "mask_probs"):
                torch.testing.assert_close(got[key], alone[i][key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("supervised_only", [False, True])
def test_training_priors_come_from_each_rois_own_box_features(supervised_only):
    """Training on [A, B] (the RoI heads' forward_train, eval-mode BatchNorm so box features are per RoI): the prior map
    added to each mask RoI equals the CAM of its class over the box-head features of that same box in that same image;
    also when only the RoIs with masks go to the mask head (`mask_head_on_supervised_only`).

    Fails on: `forward_train` advancing the row offset by the foreground count (`offset += nf`) or not at all (image
    B's RoIs then take rows of image A's RoIs); the rows not filtered like the boxes (`[:keep.sum()]` for `[keep]`)."""
    model = _eval_model()
    rh = model.roi_heads
    rh.rc.mask_head_on_supervised_only = supervised_only
    images, targets = _two_images()
    seen = _spy_mask_forward(model)
    maps = []
    hook = rh.prior_tap.register_forward_hook(lambda mod, inp, out: maps.append(inp[1].detach()))
    try:
        features, sizes = _features(model, images)
        with torch.no_grad():
            _head_losses(model, features, sizes, targets)
    finally:
        hook.remove()
    boxes, classes = seen["boxes"], seen["classes"]
    assert len(maps) == 1 and all(b.shape[0] > 0 for b in boxes)
    with torch.no_grad():
        own_feats = rh.box_head(rh.pool(features, boxes, rh.rc.box_pooler_resolution))[0]
        res = rh.rc.mask_pooler_resolution
        want = object_prior(own_feats, rh.box_head.cls_score.weight, classes, size=(res, res))
    torch.testing.assert_close(maps[0], want, rtol=1e-4, atol=1e-5)
    # and the classes are those of the matched GT; with supervised_only, only RoIs of GT with masks
    where = _matched(boxes, targets)
    assert torch.equal(classes, torch.stack([targets[i]["labels"][gi] for i, gi in where]))
    has = {bool(targets[i]["has_mask"][gi]) for i, gi in where}
    assert has == ({True} if supervised_only else {True, False})


# ------------------------------------------------------------------------------------------- 3. pixel conventions
def _shape_mask():
    """An asymmetric shape (an L with a notch) on a 128 x 120 bitmap, with GT 0 empty (gt_index must matter)."""
    m = torch.zeros(2, 128, 120, dtype=torch.uint8)
    m[1, 20:80, 30:45] = 1
    m[1, 65:80, 30:90] = 1
    m[1, 40:47, 33:38] = 0
    m[1, 21, 31] = 0  # single-pixel details that a half-pixel shift moves
    m[1, 70, 89] = 0
    return m


def test_mask_targets_are_aligned_roialign_crops():
    """A box one pixel per bin (28 x 28) gives the GT pixels themselves; two by three pixels per bin gives their block
    mean thresholded at 0.5 (adaptive sampling at pixel centres); any box matches torchvision's roi_align(aligned=True,
    sampling_ratio=0) thresholded at 0.5.

    Fails on: `mask_targets` with aligned=False (the crop moves half a pixel: edges shift by one), a fixed
    sampling_ratio=2, the threshold `> 0.5` instead of `>= 0.5`, or x and y swapped in the box."""
    m = _shape_mask()
    x0, y0 = 25, 18
    boxes = torch.tensor([[x0, y0, x0 + 28, y0 + 28], [x0, y0, x0 + 56, y0 + 84]], dtype=torch.float32)
    got = mask_targets(m, boxes, torch.tensor([1, 1]), 28)
    assert got.dtype == torch.float32 and got.shape == (2, 28, 28)
    assert torch.equal(got[0], m[1, y0:y0 + 28, x0:x0 + 28].float())
    block = F.avg_pool2d(m[1, y0:y0 + 84, x0:x0 + 56].float()[None, None], (3, 2))[0, 0]
    assert (block == 0.5).any()  # the threshold's tie is exercised
    assert torch.equal(got[1], (block >= 0.5).float())
    # fractional and non-square boxes, against torchvision; gt_index picks the bitmap
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([60.0, 50.0])
    boxes = torch.cat([xy, xy + 5 + torch.rand(12, 2, generator=g) * 50], dim=1)
    gi = torch.randint(0, 2, (12,), generator=g)
    gi[:2] = torch.tensor([0, 1])
    got = mask_targets(m, boxes, gi, 28)
    rois = torch.cat([gi[:, None].float(), boxes], dim=1)
    want = (tv_roi_align(m[:, None].float(), rois, (28, 28), 1.0, 0, aligned=True)[:, 0] >= 0.5).float()
    assert torch.equal(got, want)
    assert got[gi == 0].sum() == 0 and got[gi == 1].sum() > 0


def _level(box):
    """FPN level of a box (FPN paper eq. 1, detectron2's canonical 224 at level 4), clamped to P2..P5."""
    side = float(((box[2] - box[0]) * (box[3] - box[1])).sqrt())
    return min(max(int(torch.floor(torch.tensor(4 + torch.log2(torch.tensor(side / 224)).item() + 1e-6))), 2), 5)


def test_pooler_is_aligned_roialign_on_the_right_level():
    """`RoIHeads.pool` pools each box (two images) with roi_align(aligned=True, sampling_ratio=0) from its FPN level:
    P2 at 1/4 ... P5 at 1/32, with the box's own image; for the box head's 7 x 7 and the mask head's 14 x 14, with
    autograd on (training) and off (inference).

    Fails on: `pool` with aligned=False; the scales out of order (`_SCALES` reversed or shifted by a level); a fixed
    sampling_ratio."""
    model = _model(_cfg())
    rh = model.roi_heads
    assert rh.rc.pooler_sampling_ratio == 0
    g = torch.Generator().manual_seed(0)
    size = 640
    features = [torch.randn(2, 4, size // 2**lv, size // 2**lv, generator=g) for lv in range(2, 7)]  # P2..P6
    sides = [(20.0, 24.0), (70.0, 90.0), (150.0, 140.0), (320.0, 290.0), (600.0, 560.0), (37.3, 101.7)]
    boxes = []
    for i in range(2):
        b = []
        for j, (w, h) in enumerate(sides):
            x = float(torch.rand(1, generator=g)) * (size - w)
            y = float(torch.rand(1, generator=g)) * (size - h)
            b.append([x, y, x + w, y + h] if (i + j) % 2 == 0 else [x + 0.37, y + 0.61, x + w - 0.2, y + h - 0.45])
        boxes.append(torch.tensor(b))
    levels = [_level(b) for bb in boxes for b in bb]
    assert set(levels) == {2, 3, 4, 5}
    for res, grad in ((rh.rc.box_pooler_resolution, True), (rh.rc.mask_pooler_resolution, True),
                      (rh.rc.box_pooler_resolution, False)):  # training (autograd) and inference
        with torch.set_grad_enabled(grad):
            got = rh.pool(features, boxes, res)
        want = []
        for i, bb in enumerate(boxes):
            for b in bb:
                lv = _level(b)
                roi = torch.cat([torch.tensor([float(i)]), b])[None]
                want.append(tv_roi_align(features[lv - 2], roi, (res, res), 1 / 2**lv, 0, aligned=True)[0])
        torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)
