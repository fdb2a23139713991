"""The class-vs-background CAM (`prior_cam`) and the box projection loss for box-only RoIs (`weak_mask_loss`)."""

import pytest
import torch

from opmask_fast.config import ModelConfig
from opmask_fast.modeling.roi_heads.mask_head import box_projection_loss
from opmask_fast.ops.reference.object_prior_add import object_prior as object_prior_reference

from test_model import _cfg, _model, _sample


def _projection_oracle(logits, rois, gts, weak):
    """Dice of the x and y max-projections, one RoI and one pixel at a time, in float64."""
    total, n = 0.0, 0
    s = logits.shape[-1]
    for lg, r, g, w in zip(logits.double(), rois.double(), gts.double(), weak):
        if not w:
            continue
        p = lg.sigmoid()
        terms = 0.0
        for axis, (lo, hi, glo, ghi) in ((0, (r[0], r[2], g[0], g[2])), (1, (r[1], r[3], g[1], g[3]))):
            proj = p.max(dim=0).values if axis == 0 else p.max(dim=1).values  # columns carry x, rows carry y
            centre = lo + (torch.arange(s, dtype=torch.float64) + 0.5) * (hi - lo) / s
            t = ((centre >= glo) & (centre <= ghi)).double()
            terms = terms + 1 - 2 * (proj * t).sum() / ((proj * proj).sum() + (t * t).sum())
        total, n = total + terms, n + 1
    return total / n


@pytest.mark.parametrize("s", [5, 28])
def test_box_projection_loss_matches_a_per_pixel_oracle(s):
    g = torch.Generator().manual_seed(s)
    r = 7
    x0y0 = torch.rand(r, 2, generator=g) * 50
    rois = torch.cat([x0y0, x0y0 + 5 + torch.rand(r, 2, generator=g) * 40], 1)
    # GT boxes overlapping, inside, around and outside their RoIs; one degenerate (zero width)
    gts = rois + (torch.rand(r, 4, generator=g) - 0.5) * 30
    gts[:, 2:] = torch.maximum(gts[:, 2:], gts[:, :2])
    gts[0, 2] = gts[0, 0]
    gts[1] = torch.tensor([500.0, 500.0, 520.0, 530.0])  # nowhere near its RoI: the target projection is empty
    logits = torch.randn(r, s, s, generator=g, dtype=torch.float64, requires_grad=True)
    weak = torch.tensor([True, True, False, True, True, False, True])
    loss = box_projection_loss(logits, rois, gts, weak)
    torch.testing.assert_close(loss.double(), _projection_oracle(logits.detach(), rois, gts, weak), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[~weak].abs().sum() == 0 and grad[weak].abs().sum() > 0  # supervised RoIs are not touched


def test_box_projection_loss_edges():
    rois = torch.tensor([[0.0, 0.0, 28.0, 28.0]] * 3)
    gts = torch.tensor([[7.0, 7.0, 21.0, 21.0]] * 3)
    perfect = torch.full((3, 28, 28), -60.0)
    perfect[:, 7:21, 7:21] = 60.0
    assert float(box_projection_loss(perfect, rois, gts, torch.ones(3, dtype=torch.bool))) == pytest.approx(0, abs=1e-6)
    # a filled RoI over-covers both projections: the loss is positive
    assert float(box_projection_loss(torch.full((3, 28, 28), 60.0), rois, gts, torch.ones(3, dtype=torch.bool))) > 0.5
    logits = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(0), requires_grad=True)
    none = box_projection_loss(logits, rois, gts, torch.zeros(3, dtype=torch.bool))
    assert float(none.detach()) == 0 and none.requires_grad  # exact zero that keeps the graph
    empty = box_projection_loss(logits[:0], rois[:0], gts[:0], torch.zeros(0, dtype=torch.bool))
    assert float(empty) == 0


def test_box_projection_option_trains_the_mask_head_from_box_only_rois():
    img, t = _sample(has_mask=(False, False))  # no mask anywhere: only the projection loss can move the mask head
    for use_prior in (True, False):
        model = _model(_cfg(use_prior=use_prior)).train()
        model.roi_heads.rc.weak_mask_loss = "box_projection"
        losses = model([img], [t])
        assert set(losses) >= {"loss_mask", "loss_mask_box"} and float(losses["loss_mask"]) == 0
        losses["loss_mask_box"].backward()
        assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
    plain = _model(_cfg()).train()
    assert "loss_mask_box" not in plain([img], [t])


def test_class_vs_background_cam_is_the_cam_of_the_logit_difference():
    model = _model(_cfg(prior_scale=5.0, prior_cam="class_vs_background")).eval()
    img, t = _sample()
    heads = model.roi_heads
    seen = {}
    original = heads.box_head.forward

    def spy(x):
        out = original(x)
        seen["feats"] = out[0]
        return out

    heads.box_head.forward = spy
    got = model.predict_masks_for_boxes([img], [t["boxes"]], [t["labels"]])[0]["priors"]
    w = heads.box_head.cls_score.weight.detach().double()
    rows = torch.arange(t["boxes"].shape[0])
    want = object_prior_reference(seen["feats"].double(), w - w[-1:], t["labels"], rows)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    plain = object_prior_reference(seen["feats"].double(), w, t["labels"], rows)
    assert not torch.allclose(want, plain, atol=1e-3)  # the option changes the prior


def test_option_checks():
    ModelConfig(prior_cam="class_vs_background").validate()
    with pytest.raises(ValueError, match="prior_cam"):
        ModelConfig(prior_cam="background").validate()
    with pytest.raises(ValueError, match="weak_mask_loss"):
        cfg = ModelConfig()
        cfg.roi_heads.weak_mask_loss = "projection"
        cfg.validate()
    cfg = ModelConfig()
    cfg.roi_heads.weak_mask_loss, cfg.roi_heads.mask_head_on_supervised_only = "box_projection", True
    with pytest.raises(ValueError, match="mask_head_on_supervised_only"):
        cfg.validate()


def test_rgb_to_lab_matches_known_colours():
    """sRGB -> CIE Lab (D65) as skimage.color.rgb2lab gives it (BoxInst's colour space)."""
    from opmask_fast.modeling.roi_heads.mask_head import rgb_to_lab

    rgb = torch.tensor([[255.0, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]])
    lab = rgb_to_lab(rgb.T.reshape(1, 3, 6, 1))[0, :, :, 0].T
    want = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                         [32.30, 79.19, -107.86], [53.59, 0.0, 0.0]])
    torch.testing.assert_close(lab, want, atol=0.02, rtol=0)
    # Under bf16 autocast (training with AMP) the colours stay float32: a matmul would run in bf16, 0.6 off.
    photo = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0)) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = rgb_to_lab(photo)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, rgb_to_lab(photo))


def _two_colour_rois():
    """One 12x12 RoI over [0, 12]^2 whose left half is red and right half green (Lab, per cell), its GT box the RoI."""
    from opmask_fast.modeling.roi_heads.mask_head import rgb_to_lab

    rgb = torch.zeros(1, 3, 12, 12)
    rgb[:, 0, :, :6] = 255.0
    rgb[:, 1, :, 6:] = 255.0
    return rgb_to_lab(rgb), torch.tensor([[0.0, 0, 12, 12]])


def test_pairwise_term_counts_only_similar_neighbours_inside_the_box():
    """Fails if edges across a colour border counted (the split along the border would cost as much as one inside a
    colour), if cells outside the GT box counted, or if strong RoIs got the term."""
    from opmask_fast.modeling.roi_heads.mask_head import pairwise_color_loss

    lab, box = _two_colour_rois()
    weak = torch.tensor([True])
    along_border = torch.full((1, 12, 12), -8.0)
    along_border[:, :, :6] = 8.0  # foreground exactly on the red half: no counted edge disagrees
    across = torch.full((1, 12, 12), -8.0)
    across[:, :6, :] = 8.0  # split through both colours: every vertical edge at the split disagrees
    low = float(pairwise_color_loss(along_border, lab, box, box, weak))
    high = float(pairwise_color_loss(across, lab, box, box, weak))
    assert low < 1e-3 < 0.1 < high
    # Only cells inside the GT box count: a box over the left half sees a uniform red region.
    left = torch.tensor([[0.0, 0, 5.5, 12]])
    assert float(pairwise_color_loss(along_border, lab, box, left, weak)) < 1e-3
    none = pairwise_color_loss(across.requires_grad_(), lab, box, box, torch.tensor([False]))
    assert float(none.detach()) == 0 and none.requires_grad
    # An uncertain mask (p = 0.5) pays log 2 on every counted edge.
    torch.testing.assert_close(pairwise_color_loss(torch.zeros(1, 12, 12), lab, box, box, weak),
                               torch.tensor(0.6931), atol=1e-4, rtol=0)


def _pairwise_model(warmup: int = 0):
    cfg = _cfg()
    cfg.roi_heads.weak_mask_loss = "box_projection_pairwise"
    cfg.roi_heads.pairwise_warmup_iters = warmup
    return _model(cfg).train()


def test_pairwise_option_trains_the_mask_head_from_box_only_rois():
    img, t = _sample(has_mask=(False, False))
    model = _pairwise_model()
    losses = model([img], [t])
    assert set(losses) >= {"loss_mask", "loss_mask_box", "loss_mask_pairwise"}
    assert torch.isfinite(losses["loss_mask_pairwise"]) and float(losses["loss_mask_pairwise"]) > 0
    losses["loss_mask_pairwise"].backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the images"):
        model.roi_heads.forward_train([], [], [])


def test_pairwise_warm_up_ramps_the_term_linearly_and_survives_a_resume():
    """BoxInst's warm-up: the term's weight is step / warmup for the first `pairwise_warmup_iters` steps, then 1; the
    step count is a buffer (in checkpoints). Fails if the ramp were off by a step, never reached 1, or restarted."""
    img, t = _sample(has_mask=(False, False))
    warm, full = _pairwise_model(warmup=4), _pairwise_model(warmup=0)
    full.load_state_dict(warm.state_dict())
    for step in range(1, 7):
        torch.manual_seed(step)
        a = warm([img], [t])["loss_mask_pairwise"]
        torch.manual_seed(step)
        b = full([img], [t])["loss_mask_pairwise"]
        torch.testing.assert_close(a, b * min(1.0, step / 4))
    assert int(warm.state_dict()["roi_heads.pairwise_step"]) == 6
    resumed = _pairwise_model(warmup=100)
    resumed.load_state_dict(warm.state_dict())
    torch.manual_seed(7)
    c = resumed([img], [t])["loss_mask_pairwise"]
    torch.manual_seed(7)
    torch.testing.assert_close(c, full([img], [t])["loss_mask_pairwise"] * 7 / 100)
    bad = _cfg()
    bad.roi_heads.pairwise_warmup_iters = -1
    with pytest.raises(ValueError, match="pairwise_warmup_iters must be >= 0"):
        bad.validate()
