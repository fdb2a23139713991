"""The prior's weighting options: per-RoI adaptive gains, standardised features, the gradient scale, test-time ablations."""

import pytest
import torch

from opmask_fast.config import ModelConfig
from opmask_fast.modeling.roi_heads.prior import ablate_prior, prior_ablation, prior_statistics
from opmask_fast.ops.prior_weight import PriorWeight, add_prior

from test_model import _cfg, _model, _sample


def test_adaptive_gains_follow_each_rois_features():
    torch.manual_seed(0)
    feats = torch.randn(5, 8, 14, 14, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 10.0, 2.0]).view(5, 1, 1, 1)
    prior = torch.rand(5, 14, 14, dtype=torch.float64)
    g = PriorWeight(scale="feature_std").per_roi(feats, prior)
    assert g.shape == (5, 1, 1, 1)
    torch.testing.assert_close((g[:, 0] * prior).flatten(1).std(dim=1), feats.flatten(1).std(dim=1),
                               rtol=1e-5, atol=1e-6)
    g = PriorWeight(scale="feature_range").per_roi(feats, prior)
    torch.testing.assert_close(g.flatten(), feats.flatten(1).amax(1) - feats.flatten(1).amin(1))
    # a constant prior (std 0) or constant features give a finite gain
    g = PriorWeight(scale="feature_std").per_roi(feats, torch.zeros(5, 14, 14))
    assert torch.isfinite(g).all()
    assert PriorWeight(scale="feature_range").per_roi(torch.ones(2, 3, 4, 4), torch.rand(2, 4, 4)).eq(0).all()


@pytest.mark.parametrize("gain", [None, 3.0, "tensor", "per_roi"])
def test_grad_scale_changes_only_the_gradient(gain):
    torch.manual_seed(0)
    r, c = 4, 3
    feats = torch.randn(r, c, 6, 6, dtype=torch.float64, requires_grad=True)
    prior = torch.rand(r, 6, 6, dtype=torch.float64, requires_grad=True)
    g = {"tensor": torch.tensor([2.5], dtype=torch.float64, requires_grad=True),
         "per_roi": torch.rand(r, 1, 1, 1, dtype=torch.float64)}.get(gain, gain)
    up = torch.randn(r, c, 6, 6, dtype=torch.float64)
    plain = add_prior(feats, prior, g)
    scaled = add_prior(feats, prior, g, grad_scale=7.0)
    torch.testing.assert_close(plain, scaled)
    gp, gf = torch.autograd.grad((scaled * up).sum(), (prior, feats))
    torch.testing.assert_close(gp, 7.0 * up.sum(1))
    torch.testing.assert_close(gf, up)
    gp0 = torch.autograd.grad((add_prior(feats, prior, g, grad_scale=0.0) * up).sum(), prior, allow_unused=True)[0]
    assert gp0 is None or gp0.abs().sum() == 0
    if gain == "tensor":  # a learnable gain still learns
        (gg,) = torch.autograd.grad((add_prior(feats, prior, g, grad_scale=0.0) * up).sum(), g)
        torch.testing.assert_close(gg, (prior[:, None] * up).sum().reshape(1))


def test_ablations():
    prior = torch.arange(5 * 2 * 2, dtype=torch.float32).view(5, 2, 2)
    assert ablate_prior(prior, None) is prior
    assert ablate_prior(prior, "zero").eq(0).all()
    for seed in range(5):
        shuffled = ablate_prior(prior, "shuffle", seed=seed)
        src = shuffled[:, 0, 0].long() // 4
        assert sorted(src.tolist()) == list(range(5))  # a permutation of the RoIs' priors ...
        assert (src != torch.arange(5)).all()  # ... where no RoI keeps its own
    assert torch.equal(ablate_prior(prior[:1], "shuffle"), prior[:1])  # nothing to swap with
    assert ablate_prior(prior[:0], "shuffle").shape == (0, 2, 2)
    with pytest.raises(ValueError, match="ablation"):
        ablate_prior(prior, "flip")


def _box_head_grad(model):
    img, t = _sample(has_mask=(True, True))
    model.zero_grad()
    model([img], [t])["loss_mask"].backward()
    grads = [c[0].weight.grad for c in model.roi_heads.box_head.convs]
    return sum(0.0 if g is None else float(g.abs().sum()) for g in grads)


@pytest.mark.parametrize("kw", [dict(prior_scale="feature_range"), dict(prior_scale="feature_std"),
                                dict(prior_scale="none", prior_feature_norm=True),
                                dict(prior_scale="learnable", prior_feature_norm=True),
                                dict(prior_scale="feature_range", prior_every_conv=True)])
def test_model_options_train_and_reach_the_box_head(kw):
    model = _model(_cfg(**kw)).train()
    assert _box_head_grad(model) > 0
    stopped = _model(_cfg(prior_grad_scale=0.0, **kw)).train()
    assert _box_head_grad(stopped) == 0  # the mask loss reaches the box head only through the prior


def test_grad_scale_multiplies_the_box_head_gradient():
    base = _box_head_grad(_model(_cfg(prior_scale=2.0)).train())
    doubled = _box_head_grad(_model(_cfg(prior_scale=2.0, prior_grad_scale=4.0)).train())
    assert doubled == pytest.approx(2.0 * base, rel=1e-3)


def test_inference_ablation_changes_masks_not_priors():
    model = _model(_cfg(prior_scale=50.0)).eval()
    img, t = _sample()
    own = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
    outs = {}
    for mode in ("zero", "shuffle"):
        with prior_ablation(model, mode):
            outs[mode] = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
        torch.testing.assert_close(outs[mode]["priors"], own["priors"])  # the reported prior is the model's own
        assert not torch.allclose(outs[mode]["mask_probs"], own["mask_probs"])
    assert not model.roi_heads.prior_tap._forward_hooks  # the probe is gone after its block
    torch.testing.assert_close(model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]["mask_probs"],
                               own["mask_probs"])
    # a zero prior is exactly the model without its prior
    model.roi_heads.prior_gain.fixed = 0.0
    torch.testing.assert_close(model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]["mask_probs"],
                               outs["zero"]["mask_probs"])


def test_probes_need_a_prior_and_a_known_ablation():
    with pytest.raises(ValueError, match="no object prior"):
        with prior_ablation(_model(_cfg(use_prior=False)), "zero"):
            pass
    with pytest.raises(ValueError, match="ablation"):
        with prior_ablation(_model(_cfg()), "flip"):
            pass


def test_config_checks():
    for ok in ("feature_std", "feature_range", "none", "learnable", 3.0):
        ModelConfig(prior_scale=ok).validate()
    with pytest.raises(ValueError, match="prior_scale"):
        ModelConfig(prior_scale="feature").validate()
    with pytest.raises(ValueError, match="prior_grad_scale"):
        ModelConfig(prior_grad_scale=float("nan")).validate()


def test_prior_statistics_hook_records_each_rois_spread():
    model = _model(_cfg()).eval()
    img, t = _sample()
    plain = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
    with prior_statistics(model) as records:
        hooked = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
    model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])
    assert len(records) == 1  # one mask pass inside the block, none recorded after it
    torch.testing.assert_close(hooked["mask_probs"], plain["mask_probs"])  # recording does not change the output
    (stats,) = records
    assert {k: v.shape for k, v in stats.items()} == {k: (2,) for k in ("feature_std", "feature_range", "prior_std")}
    assert (stats["feature_range"] > stats["feature_std"]).all() and (stats["prior_std"] > 0).all()


def test_every_conv_adds_the_weighted_prior_before_each_later_conv():
    from opmask_fast.modeling.roi_heads.mask_head import MaskHead

    torch.manual_seed(0)
    head = MaskHead(in_channels=5, conv_dim=4, num_convs=3, norm="").double()
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    prior = torch.rand(2, 6, 6, dtype=torch.float64)
    seen = []

    def inject(t):
        seen.append(t.shape)
        return t + 3.0 * prior[:, None]

    out = head(x, inject)
    assert seen == [(2, 4, 6, 6)] * 2  # inputs of convs 2 and 3; the first conv reads x as given
    y = x
    for i, conv in enumerate(head.convs):
        y = conv(y if i == 0 else y + 3.0 * prior[:, None])
    torch.testing.assert_close(out, head.predictor(torch.relu(head.deconv(y)))[:, 0])
    torch.testing.assert_close(head(x, lambda t: t), head(x))


def test_every_conv_option_changes_masks_and_a_zero_prior_removes_it():
    img, t = _sample()
    outs = {}
    for deep in (False, True):
        model = _model(_cfg(prior_scale=5.0, prior_every_conv=deep)).eval()
        outs[deep] = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]["mask_probs"]
        if deep:
            with prior_ablation(model, "zero"):
                zero = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]["mask_probs"]
            model.roi_heads.prior_gain.fixed = 0.0
            torch.testing.assert_close(model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]
                                       ["mask_probs"], zero)
    assert not torch.allclose(outs[False], outs[True])
