"""Tests that kill mutants of the RoI heads (opmask_fast/modeling/roi_heads/roi_heads.py) which survived the other
tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s): ``file:line  cosmic-ray
operator``, and the mutated code."""

import torch

from test_model import _cfg, _model


def test_a_single_foreground_roi_gets_its_mask_loss():
    """roi_heads.py:106 NumberReplacer: ``if rows_t.numel() == 0`` -> ``== 1`` (a batch whose only foreground RoI is
    one mask-supervised GT would get the exact-zero mask loss of a batch without any). The proposal lies far from the
    GT, so the GT box appended to the proposals is the one foreground RoI."""
    model = _model(_cfg()).train()
    heads = model.roi_heads
    torch.manual_seed(0)
    feats = [torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:38, 12:36] = 1
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks,
              "has_mask": torch.tensor([True])}
    samples = heads.label_and_sample([torch.tensor([[50.0, 50.0, 62.0, 62.0]])], [target])
    assert samples[0]["num_fg"] == 1
    losses = heads.forward_train(feats, [torch.tensor([[50.0, 50.0, 62.0, 62.0]])], [target])
    assert float(losses["loss_mask"].detach()) > 0.1  # BCE of near-zero logits against a real target: about log 2


def test_the_heads_options_are_keyword_only():
    """roi_heads.py:28 ReplaceBinaryOperator_Mul_Div: ``def __init__(self, *, cfg, ...)`` -> ``/`` (positional)."""
    import inspect

    from opmask_fast.modeling.roi_heads.roi_heads import RoIHeads

    params = inspect.signature(RoIHeads.__init__).parameters
    assert params["cfg"].kind is inspect.Parameter.KEYWORD_ONLY


def test_an_image_without_any_gt_box_trains_with_exact_zero_mask_loss():
    """roi_heads.py:64 ReplaceComparisonOperator_Gt_GtE: ``if gt.shape[0] > 0`` -> ``>= 0`` (an image without GT boxes
    would index its empty label list), and roi_heads.py:113 ReplaceBinaryOperator_Mul_Div: ``* 0.0`` -> ``/ 0.0`` (the
    mask loss of a batch without foreground RoIs would be inf or NaN instead of an exact zero)."""
    model = _model(_cfg()).train()
    heads = model.roi_heads
    torch.manual_seed(0)
    feats = [torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 64, 64, dtype=torch.uint8), "has_mask": torch.zeros(0, dtype=torch.bool)}
    losses = heads.forward_train(feats, [torch.tensor([[5.0, 5.0, 30.0, 30.0], [20.0, 10.0, 60.0, 50.0]])], [target])
    assert float(losses["loss_mask"].detach()) == 0.0
    assert all(torch.isfinite(v).all() for v in losses.values())


def test_only_the_pairwise_term_adds_its_step_buffer():
    """roi_heads.py:45 ReplaceComparisonOperator_Eq_LtE: ``if rc.weak_mask_loss == "box_projection_pairwise"`` ->
    ``<=`` (strings: "box_projection" sorts before it, so the headline would get the warm-up's step buffer, a
    checkpoint key the headline's checkpoints do not have)."""
    for loss, has in (("none", False), ("box_projection", False), ("box_projection_pairwise", True)):
        cfg = _cfg()
        cfg.roi_heads.weak_mask_loss = loss
        assert ("roi_heads.pairwise_step" in _model(cfg).state_dict()) is has


def test_candidates_with_non_finite_boxes_are_dropped_at_inference(monkeypatch):
    """roi_heads.py:217 ReplaceBinaryOperator_BitAnd_Add: ``isfinite(boxes).all(2) & isfinite(scores)`` -> ``+`` (on
    bool tensors an or: a candidate whose decoded box is NaN but whose score is finite would be detected, with a NaN
    box). Proposal 0's deltas are NaN for every class; every class scores high on every proposal."""
    model = _model(_cfg()).eval()
    heads = model.roi_heads
    k = heads.num_classes
    feats = [torch.randn(1, 32, 64 // s, 64 // s, generator=torch.Generator().manual_seed(s)) for s in (4, 8, 16, 32, 64)]
    proposals = [torch.tensor([[5.0, 5.0, 30.0, 30.0], [20.0, 10.0, 60.0, 50.0], [2.0, 30.0, 24.0, 60.0]])]
    real = heads.box_head.forward

    def box_head(x):
        box_feats, _, deltas = real(x)
        logits = torch.zeros(x.shape[0], k + 1)
        logits[:, :k] = 5.0
        deltas = deltas.clone()
        deltas[0] = float("nan")
        return box_feats, logits, deltas
    monkeypatch.setattr(heads.box_head, "forward", box_head)
    det = heads.forward_test(feats, proposals, [(64, 64)])[0]
    assert det["boxes"].shape[0] > 0 and torch.isfinite(det["boxes"]).all()
