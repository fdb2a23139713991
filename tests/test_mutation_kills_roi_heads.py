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
