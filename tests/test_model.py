"""The model end to end on the CPU with the tiny preset: shapes and dtypes, the prior's path, baseline equivalence."""

import copy

import pytest
import torch

from opmask_fast.config import PRESETS, ModelConfig, get_preset
from opmask_fast.modeling import build_model


def _cfg(use_prior=True, **kw):
    cfg = get_preset("opmask_r18_tiny" if use_prior else "baseline_r18_tiny")
    # the tiny preset, narrower still: these tests check wiring, not accuracy, on a 2-core machine
    cfg.num_classes = 3
    cfg.backbone.fpn_channels = 32
    cfg.rpn.post_nms_topk_train, cfg.rpn.post_nms_topk_test = 200, 100
    cfg.roi_heads.batch_size_per_image = 32
    cfg.roi_heads.box_head_conv_dims = (32, 32, 32, 32)
    cfg.roi_heads.mask_head_conv_dim = 16
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _sample(h=96, w=112, has_mask=(True, False), seed=0):
    boxes = torch.tensor([[8.0, 10.0, 50.0, 70.0], [40.0, 30.0, 100.0, 90.0]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 15:65, 12:45] = 1
    masks[1, 35:85, 45:95] = 1
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255  # never the global generator
    return img, {"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks, "has_mask": torch.tensor(has_mask)}


LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}


def test_presets_validate_and_roundtrip():
    for name in PRESETS:
        cfg = get_preset(name)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.use_prior == name.startswith("opmask")
    assert get_preset("opmask_r101_coco").backbone.depth == 101
    with pytest.raises(KeyError, match="known"):
        get_preset("nope")
    with pytest.raises(ValueError, match="prior_scale"):
        ModelConfig(prior_scale="big").validate()
    for section, field, value, message in (("rpn", "post_nms_topk_test", 0, ">= 1"),
                                           ("rpn", "pre_nms_topk_train", -5, ">= 1"),
                                           ("roi_heads", "detections_per_image", 0, ">= 1"),
                                           ("roi_heads", "score_thresh", 1.5, r"in \[0, 1\]"),
                                           ("rpn", "nms_thresh", float("nan"), r"in \[0, 1\]")):
        cfg = get_preset("opmask_r18_lite")
        setattr(getattr(cfg, section), field, value)
        with pytest.raises(ValueError, match=f"{section}.{field} must be {message}"):
            cfg.validate()


def test_coco_preset_builds_frozen():
    with pytest.warns(UserWarning, match="FrozenBN but cfg.backbone.weights is not set"):
        model = build_model(get_preset("opmask_r50_coco"))
    bb = model.backbone.bottom_up
    assert not any(p.requires_grad for p in bb.conv1.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert model.roi_heads.box_head.cls_score.out_features == 81
    assert [m.stride for m in (bb.layer2[0].conv1, bb.layer2[0].conv2)] == [(2, 2), (1, 1)]  # stride in the 1x1


def test_train_losses_and_eval_outputs():
    model = _model(_cfg())
    (i1, t1), (i2, t2) = _sample(), _sample(80, 64, seed=1)
    t2["boxes"] = t2["boxes"].clamp(max=60)
    model.train()
    losses = model([i1, i2], [t1, t2])
    assert set(losses) == LOSS_KEYS
    for k, v in losses.items():
        assert v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) and v.requires_grad, k
    sum(losses.values()).backward()
    model.eval()
    out = model([i1, i2], output_sizes=[(192, 224), (80, 64)])
    for o, (h, w) in zip(out, [(192, 224), (80, 64)]):
        m = o["boxes"].shape[0]
        assert 0 < m <= 100
        assert o["boxes"].shape == (m, 4) and o["boxes"].dtype == torch.float32
        assert o["scores"].shape == (m,) and (o["scores"] >= 0.05).all()
        assert o["labels"].dtype == torch.int64 and o["labels"].max() < 3
        assert o["masks"].shape == (m, h, w) and o["masks"].dtype == torch.bool
        assert o["mask_probs"].shape == (m, 28, 28)
        assert o["priors"].shape == (m, 7, 7) and o["priors"].min() >= 0 and o["priors"].max() <= 1
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_image_without_annotations_and_box_only_targets():
    model = _model(_cfg()).train()
    img, t = _sample()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 96, 112, dtype=torch.uint8), "has_mask": torch.zeros(0, dtype=torch.bool)}
    losses = model([img], [empty])
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0
    sum(losses.values()).backward()
    # weak classes may carry no masks at all: no "masks" key, has_mask False -> exact zero that keeps the graph
    box_only = {"boxes": t["boxes"], "labels": t["labels"], "has_mask": torch.tensor([False, False])}
    losses = model([img], [box_only])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_mask"].requires_grad
    losses["loss_mask"].backward()


def test_prior_reaches_mask_head_and_box_head_gets_its_gradient():
    model = _model(_cfg()).train()
    img, t = _sample(has_mask=(True, True))
    model.zero_grad()
    model([img], [t])["loss_mask"].backward()
    bh = model.roi_heads.box_head
    assert all(c[0].weight.grad is not None and c[0].weight.grad.abs().sum() > 0 for c in bh.convs)
    assert bh.cls_score.weight.grad is None or bh.cls_score.weight.grad.abs().sum() == 0  # detached in the CAM
    # baseline: the mask loss never reaches the box head
    base = _model(_cfg(use_prior=False)).train()
    base.zero_grad()
    base([img], [t])["loss_mask"].backward()
    assert all(c[0].weight.grad is None or c[0].weight.grad.abs().sum() == 0 for c in base.roi_heads.box_head.convs)
    # at inference the prior changes the masks: zeroing the classifier rows flattens every CAM to a zero prior
    model.eval()
    boxes, labels = [t["boxes"]], [t["labels"]]
    with_prior = model.predict_masks_for_boxes([img], boxes, labels)[0]
    assert with_prior["priors"].amax(dim=(1, 2)).eq(1).all()
    with torch.no_grad():
        bh.cls_score.weight.zero_()
    without = model.predict_masks_for_boxes([img], boxes, labels)[0]
    assert without["priors"].abs().sum() == 0
    assert not torch.allclose(with_prior["mask_probs"], without["mask_probs"])


def test_prior_off_is_the_baseline():
    opm, base = _model(_cfg(prior_scale=0.0)), _model(_cfg(use_prior=False))
    assert opm.state_dict().keys() == base.state_dict().keys()
    base.load_state_dict(opm.state_dict())
    img, t = _sample()
    for m in (opm, base):
        m.eval()
    a, b = opm([img]), base([img])
    for k in ("boxes", "scores", "labels", "mask_probs", "priors", "masks"):
        torch.testing.assert_close(a[0][k], b[0][k])
    torch.manual_seed(3)
    la = opm.train()([img], [t])
    torch.manual_seed(3)
    lb = base.train()([img], [t])
    for k in LOSS_KEYS:
        torch.testing.assert_close(la[k], lb[k])


def test_fused_roi_align_prior_equals_object_prior_add():
    ref = _model(_cfg(prior_scale=3.0, prior_impl="object_prior_add"))
    other = _model(_cfg(prior_scale=3.0, prior_impl="roi_align"))
    other.load_state_dict(ref.state_dict())
    img, t = _sample(has_mask=(True, True))
    torch.manual_seed(5)
    la = ref.train()([img], [t])
    torch.manual_seed(5)
    lb = other.train()([img], [t])
    torch.testing.assert_close(la["loss_mask"], lb["loss_mask"])
    ga = torch.autograd.grad(la["loss_mask"], ref.roi_heads.box_head.convs[-1][0].weight)[0]
    gb = torch.autograd.grad(lb["loss_mask"], other.roi_heads.box_head.convs[-1][0].weight)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("scale", ["feature_std", "feature_range"])
def test_adaptive_prior_on_roi_align_equals_the_general_path(scale):
    """The headline's fused path (RoIAlign reads each RoI's weight off its own output and adds the prior as it writes
    it) gives the general path's losses, gradients and inference masks, in float64. A probe on the prior map forces
    the general path. Fails if the fused path weighted the prior differently (another statistic, the weight taken
    after the add, a gradient through the weight) or were not taken at all."""
    from opmask_fast.modeling.roi_heads.prior import prior_statistics
    model = _model(_cfg(prior_scale=scale)).double()
    img, t = _sample(has_mask=(True, False))
    img = img.double()
    assert model.roi_heads._fused()
    params = [model.roi_heads.box_head.convs[-1][0].weight, *model.roi_heads.mask_head.parameters()]
    torch.manual_seed(5)
    fused = model.train()([img], [t])
    g_fused = torch.autograd.grad(fused["loss_mask"], params)
    with prior_statistics(model) as records:
        assert not model.roi_heads._fused()
        torch.manual_seed(5)
        general = model([img], [t])
        g_general = torch.autograd.grad(general["loss_mask"], params)
        model.eval()
        with torch.no_grad():
            det_general = model([img])[0]
    assert len(records) == 2  # the general path ran once per pass
    with torch.no_grad():
        det_fused = model([img])[0]
    torch.testing.assert_close(fused["loss_mask"], general["loss_mask"], rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_general):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert g_fused[0].abs().max() > 0  # the prior's gradient reaches the box head
    assert det_fused["mask_probs"].shape[0] > 0
    torch.testing.assert_close(det_fused["mask_probs"], det_general["mask_probs"], rtol=1e-6, atol=1e-6)


def test_learnable_gain_initialised_from_feature_scale():
    model = _model(_cfg(prior_scale="learnable")).train()
    gain = model.roi_heads.prior_gain
    assert not bool(gain.initialized) and gain.gain.item() == 1.0
    img, t = _sample(has_mask=(True, True))
    loss = model([img], [t])["loss_mask"]
    assert bool(gain.initialized) and gain.gain.item() > 1.0  # normalised prior (std < 0.5) vs unit-scale features
    first = gain.gain.item()
    loss.backward()
    assert gain.gain.grad is not None and torch.isfinite(gain.gain.grad).all()
    model([img], [t])
    assert gain.gain.item() == first  # measured once, kept in the state dict
    assert "roi_heads.prior_gain.initialized" in model.state_dict()
    fixed = _model(_cfg(prior_scale="learnable", prior_gain_init=7.0))
    assert fixed.roi_heads.prior_gain.gain.item() == 7.0 and bool(fixed.roi_heads.prior_gain.initialized)


def test_predict_masks_for_boxes_scales_to_output():
    model = _model(_cfg()).eval()
    img, t = _sample()
    out = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]], output_sizes=[(192, 224)])[0]
    assert out["masks"].shape == (2, 192, 224) and out["mask_probs"].shape == (2, 28, 28)
    assert out["priors"].shape == (2, 7, 7)
    torch.testing.assert_close(out["boxes"], t["boxes"] * 2)
    assert not out["masks"][:, :, 205:].any()  # nothing beyond the scaled boxes (x2 <= 200)


def test_autocast_bfloat16_cpu():
    # the CUDA AMP path shares this code: losses and outputs stay float32 while the convs run in low precision
    model = _model(_cfg(prior_scale="learnable")).train()
    img, t = _sample(has_mask=(True, True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([img], [t])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval()([img])[0]
    assert out["boxes"].dtype == out["mask_probs"].dtype == out["priors"].dtype == torch.float32
    assert out["masks"].dtype == torch.bool


def test_bad_inputs_raise():
    model = _model(_cfg())
    img, t = _sample()
    with pytest.raises(ValueError, match="Tensor\\[3, H, W\\]"):
        model.eval()([img[:1]])
    for sizes in ([(-5, 40)], [(0, 40)], [(40,)]):
        with pytest.raises(ValueError, match="output_sizes must be \\(h, w\\) pairs of positive ints"):
            model([img], output_sizes=sizes)
    model.train()
    with pytest.raises(ValueError, match="one target dict"):
        model([img])
    bad = copy.deepcopy(t)
    bad["labels"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="0..2"):
        model([img], [bad])
    bad = copy.deepcopy(t)
    bad["masks"] = bad["masks"][:, :50]
    with pytest.raises(ValueError, match="masks"):
        model([img], [bad])


def test_inference_prior_comes_from_the_originating_proposal():
    from opmask_fast.ops import object_prior

    model = _model(_cfg(prior_scale=0.0)).eval()
    rh = model.roi_heads
    img, _ = _sample()
    batch, sizes = model.preprocess([img])
    props = torch.tensor([[5.0, 5.0, 45.0, 50.0], [60.0, 40.0, 105.0, 90.0]])
    with torch.no_grad():
        feats = model.backbone(batch)
        dets = rh.forward_test(feats, [props], sizes)[0]
        box_feats, _, _ = rh.box_head(rh.pool(feats, [props], 7))
        w = rh.box_head.cls_score.weight
    assert dets["labels"].numel() == 6  # 2 proposals x 3 classes, far apart: NMS keeps all
    # box deltas start near zero, so each detection's box tells which proposal it came from
    origin = (dets["boxes"][:, None] - props[None]).abs().sum(-1).argmin(dim=1)
    expected = object_prior(box_feats, w, dets["labels"], origin)
    torch.testing.assert_close(dets["priors"], expected)


def test_no_detections_gives_empty_outputs():
    model = _model(_cfg()).eval()
    model.roi_heads.rc.score_thresh = 1.0
    img, _ = _sample()
    out = model([img], output_sizes=[(50, 60)])[0]
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 50, 60) and out["priors"].shape == (0, 7, 7)
    assert out["mask_probs"].shape == (0, 28, 28) and out["labels"].dtype == torch.int64


def test_an_image_without_proposals_gives_no_detection_in_its_batch():
    # A 3x3 image's proposals are all below min_box_size: its row is empty and the batch's other image is unharmed
    # (the box decoding once failed on zero proposals); the static path agrees.
    from opmask_fast.modeling.meta_arch import StaticInference

    cfg = _cfg()
    cfg.rpn.min_box_size = 4.0
    model = _model(cfg).eval()
    tiny, (img, _) = torch.rand(3, 3, 3) * 255, _sample()
    with torch.no_grad():
        alone = model([tiny])[0]
        pair = model([tiny, img])
        static = StaticInference(model)(tiny[None])
    assert alone["boxes"].shape == (0, 4) and alone["masks"].shape == (0, 3, 3)
    assert pair[0]["boxes"].shape == (0, 4) and pair[1]["boxes"].shape[0] > 0
    assert static["count"].tolist() == [0]
    with pytest.raises(ValueError, match="images\\[0\\] has NaN or inf"):
        model([torch.full((3, 8, 8), float("nan"))])
