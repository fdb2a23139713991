"""add_weighted_map: RoI features plus a map weighted per RoI off the RoI's own features (the fused add of the prior
at the mask head's resolution). Forward and backward against the float64 reference, bit-equality with RoIAlign's own
`map_weight` (the kernels share one helper), the weights, edge cases (no RoIs, no channels, NaN features, a one-bin
map, a flat map), half precision, non-contiguous inputs, validation, opcheck, torch.export, and CUDA against CPU.

Under OPMASK_FAST_NO_EXTENSION=1 the op is the Python custom op around the reference: the tests through the public
function then test that fallback, and those that call the kernels themselves skip."""

from __future__ import annotations

import pytest
import torch

from opmask_fast import _extension
from opmask_fast.ops import add_weighted_map, reference, roi_align
from test_roi_align import random_rois

CUDA = torch.cuda.is_available() and _extension.cuda_built()
needs_c = pytest.mark.skipif(not _extension.has_C(), reason=f"needs opmask_fast._C ({_extension.load_error()})")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
MODES = ["none", "feature_std", "feature_range"]


def _inputs(seed: int, *, k=23, c=5, h=7, w=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    features = (torch.randn(k, c, h, w, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    roi_map = torch.rand(k, h, w, generator=gen, dtype=torch.float64).to(dtype)
    return features, roi_map


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [dict(k=23, c=5, h=7, w=3), dict(k=1, c=1, h=14, w=14), dict(k=9, c=64, h=2, w=9)])
def test_forward_and_backward_match_the_float64_reference(mode, shape):
    """Fails if the weight were read after the map was added, over one channel, differentiated, or if the map's
    gradient missed the weight or the channel sum."""
    features, roi_map = _inputs(1, **shape)
    features.requires_grad_()
    roi_map.requires_grad_()
    out = add_weighted_map(features, roi_map, mode)
    exp, gain = reference.add_weighted_map(features, roi_map, mode)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-12)
    if mode == "none":
        torch.testing.assert_close(out, features + roi_map[:, None])
    else:
        assert (gain > 0).all() and not torch.allclose(gain, torch.ones_like(gain))  # a weight that matters
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gf, gm = torch.autograd.grad(out, (features, roi_map), g)
    torch.testing.assert_close(gf, g)  # the weight is a constant of the backward
    torch.testing.assert_close(gm, g.sum(1) * gain[:, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES[1:])
def test_equals_roi_align_with_the_same_weight_bit_for_bit(mode):
    """Pooling, then this op, is what RoIAlign's map_weight computes in one pass: the model's mask-resolution
    prior may take either path and train the same."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 11, 31, 29, generator=gen)
    rois = random_rois(40, 2, 31, 29, scale=0.5, gen=gen).float()
    roi_map = torch.rand(rois.shape[0], 14, 14, generator=gen)
    fused = roi_align(x, rois, 14, 0.5, 0, True, roi_map=roi_map, map_weight=mode)
    two_step = add_weighted_map(roi_align(x, rois, 14, 0.5, 0, True), roi_map, mode)
    if _extension.has_C():
        assert torch.equal(fused, two_step)
    else:
        torch.testing.assert_close(fused, two_step)


@needs_c
@pytest.mark.parametrize("mode", MODES)
def test_kernel_returns_each_rois_weight(mode):
    features, roi_map = _inputs(4, dtype=torch.float32, k=30)
    out, weights = torch.ops.opmask_fast.add_weighted_map(features, roi_map, reference.MAP_WEIGHTS.index(mode))
    assert weights.dtype == torch.float32 and weights.shape == (30,)
    torch.testing.assert_close(weights, reference.map_gain(features, roi_map, mode), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, features + weights[:, None, None, None] * roi_map[:, None])


@pytest.mark.parametrize("mode", MODES)
def test_edge_cases(mode):
    """No RoIs; no channels (weight 0); NaN in one RoI (its weight is 0, the others unaffected); a 1x1 map (its std is
    NaN: weight 0 for feature_std); a flat map (its std clamped at 1e-6)."""
    features, roi_map = _inputs(5)
    assert add_weighted_map(features[:0], roi_map[:0], mode).shape == (0, 5, 7, 3)
    assert add_weighted_map(features[:, :0], roi_map, mode).shape == (23, 0, 7, 3)

    bad = features.clone()
    bad[4, 2, 3, 1] = float("nan")
    out = add_weighted_map(bad, roi_map, mode)
    exp, _ = reference.add_weighted_map(bad, roi_map, mode)
    torch.testing.assert_close(out, exp, equal_nan=True)
    others = torch.arange(23) != 4
    torch.testing.assert_close(out[others], add_weighted_map(features, roi_map, mode)[others])
    if mode != "none":  # weight 0: the NaN RoI gets no map
        torch.testing.assert_close(out[4], bad[4], equal_nan=True)

    one = add_weighted_map(features[:, :, :1, :1], roi_map[:, :1, :1], mode)
    torch.testing.assert_close(one, reference.add_weighted_map(features[:, :, :1, :1], roi_map[:, :1, :1], mode)[0])
    if mode == "feature_std":
        torch.testing.assert_close(one, features[:, :, :1, :1])

    flat = torch.full_like(roi_map, 0.25)
    torch.testing.assert_close(add_weighted_map(features, flat, mode), reference.add_weighted_map(features, flat, mode)[0],
                               rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", MODES[1:])
def test_reduced_precision_close_to_the_reference(dtype, mode):
    features, roi_map = _inputs(6, dtype=dtype, c=16)
    features.requires_grad_()
    roi_map.requires_grad_()
    out = add_weighted_map(features, roi_map, mode)
    assert out.dtype == dtype
    fr, mr = features.detach().double().requires_grad_(), roi_map.detach().double().requires_grad_()
    exp, _ = reference.add_weighted_map(fr, mr, mode)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=5e-2)
    torch.testing.assert_close(out.double(), exp, **tol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    gm = torch.autograd.grad(out, roi_map, g.to(dtype))[0]
    em = g.to(dtype).double().sum(1) * reference.map_gain(fr, mr, mode)[:, None, None]
    torch.testing.assert_close(gm.double(), em, rtol=tol["rtol"], atol=tol["atol"] * 16)  # a sum over channels


def test_non_contiguous_inputs_and_a_map_of_another_dtype():
    features, roi_map = _inputs(8, c=6)
    strided = features.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not strided.is_contiguous()
    out = add_weighted_map(strided, roi_map.float(), "feature_std")
    assert out.is_contiguous()
    torch.testing.assert_close(out, add_weighted_map(features, roi_map.float().double(), "feature_std"))


def test_bad_inputs_raise():
    features, roi_map = _inputs(9)
    with pytest.raises(ValueError, match="map_weight must be one of"):
        add_weighted_map(features, roi_map, "std")
    with pytest.raises(ValueError, match=r"roi_map must be a floating Tensor\[23, 7, 3\]"):
        add_weighted_map(features, roi_map[:, :6], "feature_std")
    with pytest.raises(ValueError, match="features must be a floating Tensor"):
        add_weighted_map(features[0], roi_map, "feature_std")
    with pytest.raises(ValueError, match="features must be a floating Tensor"):
        add_weighted_map(features.long(), roi_map, "feature_std")
    with pytest.raises(ValueError, match="no roi_map"):
        add_weighted_map(features, None, "feature_std")


@needs_c
def test_kernel_refuses_bad_arguments_and_opcheck():
    features, roi_map = _inputs(10, dtype=torch.float32, k=6)
    with pytest.raises(RuntimeError, match="map_weight must be 0"):
        torch.ops.opmask_fast.add_weighted_map(features, roi_map, 3)
    with pytest.raises(RuntimeError, match="roi_map must be a Tensor"):
        torch.ops.opmask_fast.add_weighted_map(features, roi_map[:5], 1)
    with pytest.raises(RuntimeError, match="one floating dtype"):
        torch.ops.opmask_fast.add_weighted_map(features, roi_map.double(), 1)
    for code in (0, 1, 2):
        torch.library.opcheck(torch.ops.opmask_fast.add_weighted_map.default,
                              (features.clone().requires_grad_(), roi_map.clone().requires_grad_(), code))


def test_gradcheck_and_export():
    # The weight is a constant of the backward, so gradcheck holds where it does not move with the checked input:
    # "none" in both inputs, "feature_range" (a function of the features only) in the map.
    features, roi_map = _inputs(11, k=4, c=3, h=3, w=2)
    assert torch.autograd.gradcheck(lambda f, m: add_weighted_map(f, m, "none"),
                                    (features.clone().requires_grad_(), roi_map.clone().requires_grad_()))
    assert torch.autograd.gradcheck(lambda m: add_weighted_map(features, m, "feature_range"),
                                    (roi_map.clone().requires_grad_(),))

    class Add(torch.nn.Module):
        def forward(self, f, m):
            return add_weighted_map(f, m, "feature_std")

    f, m = _inputs(12, dtype=torch.float32)
    program = torch.export.export(Add(), (f, m))
    f2, m2 = _inputs(13, dtype=torch.float32)
    torch.testing.assert_close(program.module()(f2, m2), add_weighted_map(f2, m2, "feature_std"))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(dtype, mode):
    features, roi_map = _inputs(14, dtype=torch.float32, k=300, c=64, h=14, w=14)
    fc, mc = features.cuda().to(dtype).requires_grad_(), roi_map.cuda().to(dtype).requires_grad_()
    fs, ms = features.to(dtype).float().requires_grad_(), roi_map.to(dtype).float().requires_grad_()
    out, exp = add_weighted_map(fc, mc, mode), add_weighted_map(fs, ms, mode)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(15))
    out.backward(g.cuda().to(dtype))
    exp.backward(g.to(dtype).float())
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=5e-2)
    torch.testing.assert_close(out.float().cpu(), exp, **tol)
    torch.testing.assert_close(mc.grad.float().cpu(), ms.grad, rtol=tol["rtol"], atol=tol["atol"] * 64)
    x = torch.randn(2, 8, 33, 35, generator=torch.Generator().manual_seed(16))
    rois = random_rois(50, 2, 33, 35, scale=0.5, gen=torch.Generator().manual_seed(17)).float()
    rmap = torch.rand(50, 14, 14, generator=torch.Generator().manual_seed(18))
    if mode != "none":  # the same device helper as roi_align_weighted's kernel
        fused = roi_align(x.cuda(), rois.cuda(), 14, 0.5, 0, True, roi_map=rmap.cuda(), map_weight=mode)
        two_step = add_weighted_map(roi_align(x.cuda(), rois.cuda(), 14, 0.5, 0, True), rmap.cuda(), mode)
        assert torch.equal(fused, two_step)
