"""Tests that kill mutants of the mask head and the mask losses (opmask_fast/modeling/roi_heads/mask_head.py) which
survived the other tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s):
``file:line  cosmic-ray operator``, and the mutated code."""

import torch

from opmask_fast.modeling.roi_heads.mask_head import MaskHead, mask_targets


def test_default_mask_head_is_7_convs_of_256():
    """mask_head.py:20 NumberReplacer: ``num_convs: int = 7`` -> ``6`` (and ``conv_dim: int = 256`` +-1): the
    default head is the paper's, 7 x conv 256, a deconv and a 1x1 predictor, 14x14 -> 28x28 logits."""
    head = MaskHead(in_channels=8)
    assert len(head.convs) == 7
    assert head.deconv.in_channels == head.deconv.out_channels == 256 and head.predictor.in_channels == 256
    assert head(torch.randn(2, 8, 14, 14)).shape == (2, 28, 28)


def test_mask_targets_of_no_roi_is_empty():
    """mask_head.py:50 NumberReplacer: ``boxes.new_zeros((0, size, size))`` -> ``(1, size, size)`` (an image with no
    RoI would add a phantom target row)."""
    gt = torch.ones(2, 40, 40, dtype=torch.uint8)
    out = mask_targets(gt, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 28)
    assert out.shape == (0, 28, 28) and out.dtype == torch.float32
