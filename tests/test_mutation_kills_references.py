"""Tests that kill mutants of the ops' pure-PyTorch references (opmask_fast/ops/reference/*.py) which survived the
other tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s): ``file:line
cosmic-ray operator``, and the mutated code."""

import torch

from opmask_fast.ops.reference.roi_align import roi_align as roi_align_reference


def test_reference_roi_align_samples_adaptively_by_default():
    """reference/roi_align.py:97 ReplaceUnaryOperator_Delete_USub: ``sampling_ratio: int = -1`` -> ``= 1``: the
    oracle's default is torchvision's and the op's (adaptive: ceil(RoI size / output size) samples per bin), so a
    test that leaves it out compares like with like."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 32, 32, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0.0, 1.0, 2.0, 29.0, 27.0], [0.0, 4.5, 3.0, 20.0, 30.0]], dtype=torch.float64)
    default = roi_align_reference(x, rois, (3, 3), 1.0, aligned=True)
    torch.testing.assert_close(default, roi_align_reference(x, rois, (3, 3), 1.0, -1, True))
    assert not torch.allclose(default, roi_align_reference(x, rois, (3, 3), 1.0, 1, True))


def test_reference_cam_normalisation_threshold_is_the_kernels():
    """reference/object_prior_add.py:18 NumberReplacer: ``EPS = 1e-6`` -> ``1.000001`` (a CAM whose spread is below 1
    would become a zero prior): the threshold is the Triton kernels' (kernels/object_prior_add.py), and a CAM of
    spread 1e-3 is normalised while one of spread 1e-7 is constant."""
    from opmask_fast.kernels.object_prior_add import EPS as KERNEL_EPS
    from opmask_fast.ops.reference.object_prior_add import EPS, normalize_cam

    assert EPS == KERNEL_EPS == 1e-6
    cam = torch.tensor([[0.0, 0.25, 0.5], [2.0, 2.0005, 2.001], [1.0, 1.0 + 1e-7, 1.0]], dtype=torch.float64)
    out = normalize_cam(cam)
    torch.testing.assert_close(out[:2], torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]], dtype=torch.float64))
    assert out[2].eq(0).all()
