"""RoIAlign with an adaptively weighted roi_map (`map_weight`): the fused path of the feature-std and feature-range
priors. Forward and backward against the float64 reference on random and hand-built boxes, the weights themselves,
edge cases (no RoIs, no channels, NaN features, a one-bin map, a flat map), half precision, the multi-level op,
opcheck, validation and the CUDA kernels against the CPU ones.

Under OPMASK_FAST_NO_EXTENSION=1 the public ops run the reference: the tests through ``roi_align`` then test the
fallback, and those that call the kernels themselves skip."""

from __future__ import annotations

import pytest
import torch

from opmask_fast import _extension
from opmask_fast.ops import multi_level_roi_align, reference, roi_align
from test_roi_align import edge_rois, random_rois

CUDA = torch.cuda.is_available() and _extension.cuda_built()
needs_c = pytest.mark.skipif(not _extension.has_C(), reason=f"needs opmask_fast._C ({_extension.load_error()})")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
MODES = ["feature_std", "feature_range"]


def _inputs(seed: int, *, n=2, c=7, h=19, w=23, k=40, size=(5, 3), scale=0.5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    rois = torch.cat([random_rois(k, n, h, w, scale=scale, gen=gen), edge_rois(int(h / scale), int(w / scale))])
    rois = rois.to(torch.float64 if dtype == torch.float64 else torch.float32)
    roi_map = torch.rand(rois.shape[0], *size, generator=gen, dtype=torch.float64).to(dtype)
    return x, rois, roi_map


def _reference(x, rois, roi_map, size, scale, sampling_ratio, aligned, mode):
    """The float64 reference of the same (rounded) inputs and its gradients for `grad`."""
    xr = x.detach().double().requires_grad_()
    mr = roi_map.detach().double().requires_grad_()
    out = reference.roi_align(xr, rois.double(), size, scale, sampling_ratio, aligned, roi_map=mr, map_weight=mode)
    return xr, mr, out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned,sampling_ratio,size", [(True, 0, (5, 3)), (False, 2, (7, 7)), (True, -1, (1, 4))])
def test_forward_and_backward_match_the_float64_reference(mode, aligned, sampling_ratio, size):
    """Fails if the weight were read off the output after the map was added, computed over one channel only,
    differentiated (the weight is a constant), or if the map's gradient missed the weight."""
    x, rois, roi_map = _inputs(1, size=size)
    x.requires_grad_()
    roi_map.requires_grad_()
    out = roi_align(x, rois, size, 0.5, sampling_ratio, aligned, roi_map=roi_map, map_weight=mode)
    xr, mr, exp = _reference(x, rois, roi_map, size, 0.5, sampling_ratio, aligned, mode)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gx, gm = torch.autograd.grad(out, (x, roi_map), g)
    ex, em = torch.autograd.grad(exp, (xr, mr), g)
    torch.testing.assert_close(gx, ex, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm, em, rtol=1e-12, atol=1e-12)
    plain = roi_align(x.detach(), rois, size, 0.5, sampling_ratio, aligned)
    weight = reference.map_gain(plain, roi_map.detach(), mode)
    torch.testing.assert_close(gm, g.sum(1) * weight[:, None, None])


@needs_c
@pytest.mark.parametrize("mode", MODES)
def test_kernel_returns_each_rois_weight(mode):
    x, rois, roi_map = _inputs(3, dtype=torch.float32, k=60)
    code = reference.MAP_WEIGHTS.index(mode)
    out, weights = torch.ops.opmask_fast.roi_align_weighted(x, rois, 0.5, 5, 3, 0, True, roi_map, code)
    plain = roi_align(x, rois, (5, 3), 0.5, 0, True)
    expected = reference.map_gain(plain, roi_map, mode)
    assert weights.dtype == torch.float32 and weights.shape == (rois.shape[0],)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, plain + weights[:, None, None, None] * roi_map[:, None], rtol=1e-5, atol=1e-5)
    assert (weights > 0).float().mean() > 0.8  # not a test of zeros: most boxes see features


@pytest.mark.parametrize("mode", MODES)
def test_edge_cases(mode):
    """No RoIs; no channels (weight 0); NaN features in one image (that image's RoIs get weight 0, the other's are
    unaffected); a 1x1 output (the map's std is NaN: weight 0 for feature_std); a flat map (std clamped at 1e-6)."""
    x, rois, roi_map = _inputs(4, k=10)
    empty = roi_align(x, rois[:0], (5, 3), 0.5, 0, True, roi_map=roi_map[:0], map_weight=mode)
    assert empty.shape == (0, 7, 5, 3)
    none = roi_align(x[:, :0], rois, (5, 3), 0.5, 0, True, roi_map=roi_map, map_weight=mode)
    assert none.shape == (rois.shape[0], 0, 5, 3)

    bad = x.clone()
    bad[1, :, 5, 5] = float("nan")
    rois_nan = torch.cat([rois, torch.tensor([[1.0, 0.0, 0.0, 30.0, 30.0]], dtype=rois.dtype)])
    map_nan = torch.cat([roi_map, torch.rand(1, 5, 3, dtype=roi_map.dtype)])
    out = roi_align(bad, rois_nan, (5, 3), 0.5, 2, True, roi_map=map_nan, map_weight=mode)
    plain = roi_align(bad, rois_nan, (5, 3), 0.5, 2, True)
    torch.testing.assert_close(out[-1], plain[-1], equal_nan=True)  # weight 0: the NaN RoI gets no map
    exp = reference.roi_align(bad, rois_nan, (5, 3), 0.5, 2, True, roi_map=map_nan, map_weight=mode)
    torch.testing.assert_close(out, exp, equal_nan=True)
    image0 = rois_nan[:, 0] == 0  # the other image's RoIs read no NaN: their weights are as without it
    clean = roi_align(x, rois_nan, (5, 3), 0.5, 2, True, roi_map=map_nan, map_weight=mode)
    torch.testing.assert_close(out[image0], clean[image0])

    one = roi_align(x, rois, (1, 1), 0.5, 0, True, roi_map=roi_map[:, :1, :1], map_weight=mode)
    exp = reference.roi_align(x, rois, (1, 1), 0.5, 0, True, roi_map=roi_map[:, :1, :1], map_weight=mode)
    torch.testing.assert_close(one, exp)
    if mode == "feature_std":
        torch.testing.assert_close(one, roi_align(x, rois, (1, 1), 0.5, 0, True))

    flat = torch.full_like(roi_map, 0.25)
    out = roi_align(x, rois, (5, 3), 0.5, 0, True, roi_map=flat, map_weight=mode)
    exp = reference.roi_align(x, rois, (5, 3), 0.5, 0, True, roi_map=flat, map_weight=mode)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_reduced_precision_close_to_the_reference(dtype, mode):
    x, rois, roi_map = _inputs(5, dtype=dtype, c=16)
    x.requires_grad_()
    roi_map.requires_grad_()
    out = roi_align(x, rois, (5, 3), 0.5, 0, True, roi_map=roi_map, map_weight=mode)
    assert out.dtype == dtype
    xr, mr, exp = _reference(x, rois, roi_map, (5, 3), 0.5, 0, True, mode)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.double(), exp, **tol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gx, gm = torch.autograd.grad(out, (x, roi_map), g.to(dtype))
    ex, em = torch.autograd.grad(exp, (xr, mr), g.to(dtype).double())
    torch.testing.assert_close(gx.double(), ex, **tol)
    torch.testing.assert_close(gm.double(), em, rtol=tol["rtol"], atol=tol["atol"] * 20)  # a sum over channels


@pytest.mark.parametrize("mode", ["none", *MODES])
def test_multi_level_op_weights_each_roi_on_its_own_level(mode):
    """Fails if the multi-level kernel read the weight off another level's pooling or a block of channels."""
    gen = torch.Generator().manual_seed(7)
    feats = [torch.randn(2, 9, 32 // 2**i, 40 // 2**i, generator=gen, dtype=torch.float64) for i in range(3)]
    rois = random_rois(50, 2, 32, 40, scale=1.0, gen=gen)
    levels = torch.randint(0, 3, (50,), generator=gen)
    roi_map = torch.rand(50, 6, 5, generator=gen, dtype=torch.float64)
    scales = [1.0, 0.5, 0.25]
    out = multi_level_roi_align(feats, rois, levels, (6, 5), scales, 0, True, roi_map=roi_map, map_weight=mode)
    for r in range(50):
        lv = int(levels[r])
        one = roi_align(feats[lv], rois[r:r + 1], (6, 5), scales[lv], 0, True, roi_map=roi_map[r:r + 1],
                        map_weight=mode)
        torch.testing.assert_close(out[r:r + 1], one, rtol=1e-12, atol=1e-12)


def test_bad_map_weight_raises():
    x, rois, roi_map = _inputs(8, k=3)
    with pytest.raises(ValueError, match="map_weight must be one of"):
        roi_align(x, rois, (5, 3), 0.5, roi_map=roi_map, map_weight="std")
    with pytest.raises(ValueError, match="no roi_map"):
        roi_align(x, rois, (5, 3), 0.5, map_weight="feature_std")
    with pytest.raises(ValueError, match="map_weight must be one of"):
        multi_level_roi_align([x], rois, torch.zeros(rois.shape[0], dtype=torch.long), (5, 3), [0.5],
                              roi_map=roi_map, map_weight="range")


@needs_c
def test_kernels_refuse_a_bad_code_and_opcheck():
    x, rois, roi_map = _inputs(9, k=5, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="map_weight must be 0"):
        torch.ops.opmask_fast.roi_align_weighted(x, rois, 0.5, 5, 3, 0, True, roi_map, 3)
    with pytest.raises(RuntimeError, match="needs a roi_map"):
        torch.ops.opmask_fast.multi_level_roi_align([x], rois, torch.zeros(rois.shape[0], dtype=torch.long), [0.5],
                                                    5, 3, 0, True, None, 1)
    xs = x[:, :3].contiguous().requires_grad_()
    ms = roi_map.clone().requires_grad_()
    torch.library.opcheck(torch.ops.opmask_fast.roi_align_weighted.default, (xs, rois, 0.5, 5, 3, 2, True, ms, 1))
    torch.library.opcheck(torch.ops.opmask_fast.roi_align_weighted.default, (xs, rois, 0.5, 5, 3, 0, False, ms, 2))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(dtype, mode):
    x, rois, roi_map = _inputs(10, dtype=torch.float32, c=64, h=40, w=48, k=300, size=(14, 14))
    xc, mc = x.cuda().to(dtype).requires_grad_(), roi_map.cuda().to(dtype).requires_grad_()
    out = roi_align(xc, rois.cuda(), (14, 14), 0.5, 0, True, roi_map=mc, map_weight=mode)
    xs, ms = x.to(dtype).float().requires_grad_(), roi_map.to(dtype).float().requires_grad_()
    exp = roi_align(xs, rois, (14, 14), 0.5, 0, True, roi_map=ms, map_weight=mode)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(11))
    out.backward(g.cuda().to(dtype))
    exp.backward(g.to(dtype).float())
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.float().cpu(), exp, **tol)
    torch.testing.assert_close(xc.grad.float().cpu(), xs.grad, **tol)
    torch.testing.assert_close(mc.grad.float().cpu(), ms.grad, rtol=tol["rtol"], atol=tol["atol"] * 64)
    levels = torch.randint(0, 2, (rois.shape[0],), generator=torch.Generator().manual_seed(12))
    feats = [x, x[:, :, ::2, ::2].contiguous()]
    with torch.no_grad():
        ml = multi_level_roi_align([f.cuda().to(dtype) for f in feats], rois.cuda(), levels.cuda(), (14, 14),
                                   [0.5, 0.25], 0, True, roi_map=mc.detach(), map_weight=mode)
        ml_cpu = multi_level_roi_align([f.to(dtype).float() for f in feats], rois, levels, (14, 14), [0.5, 0.25], 0,
                                       True, roi_map=ms.detach(), map_weight=mode)
    torch.testing.assert_close(ml.float().cpu(), ml_cpu, **tol)
