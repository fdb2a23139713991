"""The prior at the mask head's resolution (`prior_resolution="mask"`): the box head's CAM over each RoI's own 14x14
mask features, its BatchNorm read with running statistics, its gradient into the box convs, and the static path."""

import contextlib
import copy

import pytest
import torch

from opmask_fast.config import ModelConfig
from opmask_fast.modeling.meta_arch import StaticInference
from opmask_fast.modeling.roi_heads.box_head import BoxHead

from test_model import _cfg, _model, _sample


@pytest.mark.parametrize("norm", ["BN", "GN", ""])
def test_conv_map_reads_running_statistics_and_leaves_them(norm):
    torch.manual_seed(0)
    head = BoxHead(in_channels=6, conv_dims=(8, 5), norm=norm, num_classes=3).train()
    head(torch.randn(9, 6, 7, 7) * 2 + 1)  # a training pass moves the running statistics away from 0 / 1
    before = copy.deepcopy(head.state_dict())
    x = torch.randn(4, 6, 14, 13, requires_grad=True)
    out = head.conv_map(x)
    assert out.shape == (4, 5, 14, 13)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k  # no statistic moved, in training mode
    ref = copy.deepcopy(head).eval().convs(x)  # what the convs give with the running statistics
    torch.testing.assert_close(out, ref)
    if norm == "BN":  # and not what the batch's own statistics give
        assert not torch.allclose(out, head.convs(x.detach()))
    out.square().sum().backward()
    assert all(c[0].weight.grad.abs().sum() > 0 for c in head.convs)
    assert x.grad.abs().sum() > 0


def _mask_res_model(**kw):
    return _model(_cfg(prior_scale="feature_std", prior_resolution="mask", **kw))


def test_prior_is_the_min_max_cam_of_the_box_convs_over_the_mask_features():
    model = _mask_res_model().eval()
    img, t = _sample()
    heads = model.roi_heads
    with torch.no_grad():
        out = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
        assert out["priors"].shape == (2, 14, 14) and heads.prior_size == 14
        feats = heads.pool(model.extract([img])[0], [t["boxes"]], 14)  # the model does not resize its input
    cam_feats = heads.box_head.conv_map(feats).double()
    w = heads.box_head.cls_score.weight.double()[t["labels"]]
    cam = torch.einsum("rchw,rc->rhw", cam_feats, w)
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out["priors"].double(), (cam - lo) / (hi - lo), atol=1e-5, rtol=1e-4)


def test_mask_loss_trains_the_box_convs_and_leaves_their_statistics_to_the_box_pass():
    img, t = _sample(has_mask=(True, True))
    models = {}
    for res in ("box", "mask"):
        model = _model(_cfg(prior_scale="feature_std", prior_resolution=res)).train()
        torch.manual_seed(1)  # the same RoI sampling in both
        model([img], [t])["loss_mask"].backward()
        models[res] = model
    bh = models["mask"].roi_heads.box_head
    assert all(c[0].weight.grad.abs().sum() > 0 for c in bh.convs)  # the mask loss refines the box convs
    assert bh.cls_score.weight.grad is None or bh.cls_score.weight.grad.abs().sum() == 0  # classifier detached
    # The box head's BatchNorm statistics move with the box pass only: the same as at box resolution.
    box_bn = {k: v for k, v in models["box"].roi_heads.box_head.state_dict().items() if "running" in k}
    assert box_bn and all(torch.equal(bh.state_dict()[k], v) for k, v in box_bn.items())


def test_detached_box_head_gets_no_mask_gradient_and_the_same_forward():
    img, t = _sample(has_mask=(True, True))
    out = {}
    for grad_scale in (None, 0.0):
        model = _mask_res_model(prior_grad_scale=grad_scale).train()
        torch.manual_seed(1)
        loss = model([img], [t])["loss_mask"]
        loss.backward()
        out[grad_scale] = loss.detach(), model.roi_heads.box_head
    torch.testing.assert_close(out[0.0][0], out[None][0])  # the same loss: only the gradient changes
    assert all(c[0].weight.grad is None or c[0].weight.grad.abs().sum() == 0 for c in out[0.0][1].convs)
    assert all(c[0].weight.grad.abs().sum() > 0 for c in out[None][1].convs)


@pytest.mark.parametrize("scale,grad_scale,convs,grad_rois", [
    ("feature_std", None, "box_head", "all"), ("feature_std", 0.0, "box_head", "all"), (2.5, None, "box_head", "all"),
    (2.5, 0.0, "box_head", "all"), ("feature_std", None, "separate", "all"),
    ("feature_std", None, "separate", "mask_supervised")])
def test_fused_path_equals_the_general_path(scale, grad_scale, convs, grad_rois):
    """The fused path (one pooling, the weighted mask-resolution prior added by `add_weighted_map`) gives the general
    path's losses, gradients and inference masks in float64; a probe on the prior map forces the general path. With
    `prior_convs="separate"` the prior's convs are the prior head's; with it and `prior_grad_rois="mask_supervised"`
    (the headline) only the mask-supervised RoIs' priors carry gradient."""
    from opmask_fast.modeling.roi_heads.prior import prior_statistics
    model = _model(_cfg(prior_scale=scale, prior_resolution="mask", prior_grad_scale=grad_scale, prior_convs=convs,
                        prior_head_width=3 if convs == "separate" else 0, prior_grad_rois=grad_rois)).double()
    img, t = _sample(has_mask=(True, False))
    img = img.double()
    assert model.roi_heads._fused()
    # the prior's convs (through the prior), P2's output conv (through the pooled features), the mask head
    prior_convs = (model.roi_heads.prior_head or model.roi_heads.box_head).convs
    params = [prior_convs[-1][0].weight, model.backbone.output_convs[0][0].weight,
              *model.roi_heads.mask_head.parameters()]
    runs, state = {}, copy.deepcopy(model.state_dict())
    for path in ("fused", "general"):
        with prior_statistics(model) if path == "general" else contextlib.nullcontext():
            assert model.roi_heads._fused() == (path == "fused")
            model.load_state_dict(state)  # the CAM reads the box head's running statistics, which a pass moves
            torch.manual_seed(5)
            loss = model.train()([img], [t])["loss_mask"]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                det = model.eval()([img])[0]
        runs[path] = loss, grads, det
    (lf, gf, df), (lg, gg, dg) = runs["fused"], runs["general"]
    torch.testing.assert_close(lf, lg, rtol=1e-12, atol=1e-12)
    for a, b in zip(gf, gg):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    box_grad = gf[0]
    assert (box_grad is None or box_grad.abs().max() == 0) if grad_scale == 0 else box_grad.abs().max() > 0
    assert df["mask_probs"].shape[0] > 0
    torch.testing.assert_close(df["mask_probs"], dg["mask_probs"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(df["priors"], dg["priors"], rtol=1e-9, atol=1e-12)


def test_zeroed_prior_changes_the_masks():
    from opmask_fast.modeling.roi_heads.prior import prior_ablation
    model = _mask_res_model().eval()
    img, t = _sample()
    with torch.no_grad():
        own = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
        with prior_ablation(model, "zero"):
            zero = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
    torch.testing.assert_close(own["priors"], zero["priors"])  # the probe replaces the added map, not the reported one
    assert not torch.allclose(own["mask_probs"], zero["mask_probs"])


def test_static_path_equals_the_dynamic_path_and_exports():
    model = _mask_res_model().eval()
    img, _ = _sample()
    static = StaticInference(model)
    with torch.no_grad():
        dyn, out = model([img])[0], static(img[None])
    n = int(out["count"][0])
    assert n == dyn["boxes"].shape[0] > 0
    assert out["priors"].shape[2:] == (14, 14)
    torch.testing.assert_close(out["boxes"][0, :n], dyn["boxes"])
    torch.testing.assert_close(out["mask_probs"][0, :n], dyn["mask_probs"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["priors"][0, :n], dyn["priors"], atol=1e-5, rtol=1e-4)
    # export fails on any data-dependent read on the host: the CAM pass adds no synchronisation
    ep = torch.export.export(static, (img[None],))
    torch.testing.assert_close(ep.module()(img[None])["priors"], out["priors"], atol=1e-5, rtol=1e-4)


def test_config_names_the_bad_resolution():
    cfg = ModelConfig(prior_resolution="pixel")
    with pytest.raises(ValueError, match="prior_resolution must be one of box, mask, got 'pixel'"):
        cfg.validate()


@pytest.mark.parametrize("res,convs", [("box", "box_head"), ("mask", "box_head"), ("mask", "separate")])
def test_prior_grad_rois_keeps_only_the_mask_supervised_rois_gradient(res, convs):
    """With grad_rois (prior_grad_rois="mask_supervised") a RoI outside it sends nothing back to the prior's convs (the
    box head's, or with "separate" the prior head's, as in the headline) through its prior, one inside it does, and
    the forward is unchanged. Eval mode: the mask head's BatchNorm then does not mix RoIs, so each RoI's logits depend
    on its own prior only."""
    model = _model(_cfg(prior_scale="feature_std", prior_resolution=res, prior_convs=convs,
                        prior_head_width=5 if convs == "separate" else 0)).eval()
    img, t = _sample()
    heads = model.roi_heads
    features = model.extract([img])[0]
    boxes, classes = [t["boxes"]], t["labels"]
    box_feats, _, _ = heads.box_head(heads.pool(features, boxes, heads.rc.box_pooler_resolution))
    rows = torch.arange(2)
    weights = [c[0].weight for c in (heads.prior_head if convs == "separate" else heads.box_head).convs]
    grads, logits = {}, {}
    for name, grad_rois in (("all", None), ("first", torch.tensor([True, False]))):
        out, _ = heads.mask_forward(features, boxes, box_feats, classes, rows, grad_rois=grad_rois)
        logits[name] = out.detach()
        grads[name] = [torch.autograd.grad(out[r].sum(), weights, retain_graph=True) for r in range(2)]
    torch.testing.assert_close(logits["first"], logits["all"], rtol=0, atol=0)
    assert all(g.abs().sum() > 0 for r in range(2) for g in grads["all"][r])
    assert all(g.abs().sum() > 0 for g in grads["first"][0])
    assert all(g.abs().sum() == 0 for g in grads["first"][1])  # the second RoI's prior carries no gradient
    for a, b in zip(grads["first"][0], grads["all"][0]):
        torch.testing.assert_close(a, b)


def test_config_names_the_bad_prior_grad_rois():
    with pytest.raises(ValueError, match="prior_grad_rois must be one of all, mask_supervised, got 'weak'"):
        ModelConfig(prior_grad_rois="weak").validate()


@pytest.mark.parametrize("norm", ["BN", "GN", ""])
def test_conv_map_with_residuals_trains_them_and_not_the_box_head(norm):
    torch.manual_seed(0)
    head = BoxHead(in_channels=6, conv_dims=(8, 5), norm=norm, num_classes=3).train()
    head(torch.randn(9, 6, 7, 7) * 2 + 1)
    residual = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros_like(c[0].weight)) for c in head.convs])
    x = torch.randn(4, 6, 14, 13)
    torch.testing.assert_close(head.conv_map(x, residual), head.conv_map(x), rtol=0, atol=0)  # zero residuals: the same
    with torch.no_grad():
        residual[0].add_(torch.randn_like(residual[0]) * 0.1)
    out = head.conv_map(x, residual)
    shifted = copy.deepcopy(head)
    with torch.no_grad():
        shifted.convs[0][0].weight.add_(residual[0])
    torch.testing.assert_close(out, shifted.conv_map(x))  # the residual adds to the conv's weight
    out.square().sum().backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in residual)
    assert all(p.grad is None for p in head.parameters())  # nothing reaches the box head


def test_residual_prior_trains_only_its_residuals_through_the_prior():
    """prior_convs="residual": at the start (residuals 0) the loss is the detached prior's; the mask loss reaches the
    residuals, not the box convs, and the backbone gets the same gradient as with the detached prior (the prior's pass
    reads the pooled features without gradient)."""
    img, t = _sample(has_mask=(True, True))
    runs = {}
    for name, kw in (("detached", {"prior_grad_scale": 0.0}), ("residual", {"prior_convs": "residual"})):
        torch.manual_seed(0)
        model = _mask_res_model(**kw).train()
        torch.manual_seed(1)
        loss = model([img], [t])["loss_mask"]
        loss.backward()
        runs[name] = loss.detach(), model
    (loss_d, det), (loss_r, res) = runs["detached"], runs["residual"]
    torch.testing.assert_close(loss_r, loss_d, rtol=0, atol=0)
    assert all(r.grad.abs().sum() > 0 for r in res.roi_heads.prior_conv_residual)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in res.roi_heads.box_head.parameters())
    p2_det, p2_res = det.backbone.output_convs[0][0].weight.grad, res.backbone.output_convs[0][0].weight.grad
    torch.testing.assert_close(p2_res, p2_det)
    assert det.roi_heads.prior_conv_residual is None and "prior_conv_residual.0" not in det.state_dict()


@pytest.mark.parametrize("width", [0, 5])
def test_separate_prior_head_trains_by_its_classification_and_the_mask_loss_alone(width):
    """prior_convs="separate": the prior is the min-max CAM of the prior head's own convs and classifier; the mask
    loss and the prior head's classification loss of the mask RoIs train it, never the box head. prior_head_width
    sets its convs' width (0: the box head's)."""
    img, t = _sample(has_mask=(True, False))
    model = _mask_res_model(prior_convs="separate", prior_head_width=width).train()
    box_widths = [c[0].out_channels for c in model.roi_heads.box_head.convs]
    assert [c[0].out_channels for c in model.roi_heads.prior_head.convs] == ([width] * len(box_widths) if width
                                                                             else box_widths)
    losses = model([img], [t])
    assert set(losses) >= {"loss_prior_cls", "loss_mask"} and losses["loss_prior_cls"] > 0
    heads = model.roi_heads
    (losses["loss_mask"] + losses["loss_prior_cls"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.prior_head.parameters())
    model.zero_grad()
    model([img], [t])["loss_mask"].backward()  # the mask loss alone: the prior head, not the box head
    assert all(c[0].weight.grad.abs().sum() > 0 for c in heads.prior_head.convs)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in heads.box_head.parameters())
    assert heads.prior_head.cls_score.weight.grad is None  # the CAM reads the classifier detached
    model.eval()
    with torch.no_grad():
        out = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
        feats = heads.pool(model.extract([img])[0], [t["boxes"]], 14)
        cam_feats, _ = heads.prior_head(feats)
    w = heads.prior_head.cls_score.weight.double()[t["labels"]]
    cam = torch.einsum("rchw,rc->rhw", cam_feats.double(), w)
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out["priors"].double(), (cam - lo) / (hi - lo), atol=1e-5, rtol=1e-4)
    # the static path runs the same head and exports
    static = StaticInference(model)
    with torch.no_grad():
        dyn, st = model([img])[0], static(img[None])
    n = int(st["count"][0])
    torch.testing.assert_close(st["priors"][0, :n], dyn["priors"], atol=1e-5, rtol=1e-4)
    torch.export.export(static, (img[None],))


@pytest.mark.parametrize("convs", ["residual", "separate"])
@pytest.mark.parametrize("kw", [{"prior_resolution": "box"}, {"prior_grad_scale": 0.0}, {"use_prior": False}])
def test_config_names_prior_convs_that_nothing_trains(kw, convs):
    cfg = ModelConfig(prior_resolution="mask", prior_convs=convs)
    for k, v in kw.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=f"prior_convs='{convs}' needs use_prior, prior_resolution='mask'"):
        cfg.validate()
    with pytest.raises(ValueError, match="prior_convs must be one of box_head, residual, separate, got 'own'"):
        ModelConfig(prior_convs="own").validate()


@pytest.mark.parametrize("convs,width", [("box_head", 32), ("separate", -1)])
def test_config_names_a_prior_head_width_without_a_prior_head(convs, width):
    cfg = ModelConfig(use_prior=True, prior_resolution="mask", prior_convs=convs, prior_head_width=width)
    with pytest.raises(ValueError, match=f"prior_head_width must be 0 .* got {width} with prior_convs='{convs}'"):
        cfg.validate()
