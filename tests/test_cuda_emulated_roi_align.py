"""The RoIAlign family's CUDA kernels, run on the CPU: tests/cuda_emulation compiles csrc/cuda/roi_align_kernels.cuh
with g++ under an emulation of CUDA's block model (a thread per CUDA thread, barriers, shared memory, atomics; the
`emu` fixture of tests/conftest.py) and runs each op's own launch plan. So the GPU code's indexing, block
reductions, per-block statistics and launch order are checked here, against the CPU kernels (float32: the same
arithmetic per output) and the float64 reference, on inputs that give one and several channel groups per RoI, edge
boxes, non-finite features and degenerate maps. Every output starts as NaN, so an element no block writes shows. What the emulation cannot show (memory coalescing, races
between blocks, timing) the GPU run does (benchmarks/gpu_run.sh)."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from cuda_emulation.emulation import I64, P, acc, call, code, poisoned, ptr
from opmask_fast import _extension
from opmask_fast.ops import reference
from test_roi_align import edge_rois, random_rois

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"none": 0, "feature_std": 1, "feature_range": 2}


def emulated_roi_align(emu, x, rois, size, scale, sampling_ratio, aligned, roi_map=None, map_weight="none"):
    k, (ph, pw) = rois.shape[0], size
    out = poisoned((k, x.shape[1], ph, pw), x.dtype)
    weights = poisoned((k,), acc(x.dtype))
    call(emu.emu_roi_align_forward, code(x.dtype), ptr(x), ptr(rois), ptr(roi_map), ptr(out),
         ptr(weights), I64(MODES[map_weight]), *map(I64, (*x.shape, k, ph, pw)), ctypes.c_double(scale),
         I64(sampling_ratio), ctypes.c_int(int(aligned)))
    return out, weights


def _inputs(seed, *, n=2, c=40, h=19, w=23, k=12, size=(7, 7), scale=0.5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    rois = torch.cat([random_rois(k, n, h, w, scale=scale, gen=gen), edge_rois(int(h / scale), int(w / scale))])
    roi_map = torch.rand(rois.shape[0], *size, generator=gen, dtype=torch.float64).to(dtype)
    return x, rois.to(acc(dtype)), roi_map


# (channels, pooled size): one channel group per RoI (7 x 15 outputs), two (40 x 49: 21 channels per block), and one
# channel per block (3 x 1200 outputs, more than a block's 1024).
SHAPES = [(7, (5, 3)), (40, (7, 7)), (3, (40, 30))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c,size", SHAPES)
@pytest.mark.parametrize("mode", ["plain", "as_is", "feature_std", "feature_range"])
def test_roi_align_forward_matches_the_cpu_kernel_and_the_reference(emu, dtype, c, size, mode):
    """Fails if a block pooled the wrong channels or bins, a group's statistics were lost or counted twice in the
    merge, the weight were taken before the pooling finished, or the map were added to the wrong RoI."""
    x, rois, roi_map = _inputs(3, c=c, size=size, dtype=dtype)
    args = (x, rois, size, 0.5, 2 if size == (7, 7) else 0, size != (5, 3))
    if mode in ("plain", "as_is"):
        m = roi_map if mode == "as_is" else None
        out, _ = emulated_roi_align(emu, *args, roi_map=m)
        exp = reference.roi_align(x.double(), rois.double(), *args[2:], roi_map=None if m is None else m.double())
    else:
        out, weights = emulated_roi_align(emu, *args, roi_map=roi_map, map_weight=mode)
        exp = reference.roi_align(x.double(), rois.double(), *args[2:], roi_map=roi_map.double(), map_weight=mode)
        plain = reference.roi_align(x.double(), rois.double(), *args[2:])
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(weights.double(), reference.map_gain(plain, roi_map.double(), mode),
                                   rtol=tol, atol=tol)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), exp, **tol)
    if _extension.has_C():  # the CPU kernel: the same float32 arithmetic per output
        if mode in ("plain", "as_is"):
            cpu = torch.ops.opmask_fast.roi_align(x, rois, 0.5, *size, args[4], args[5], m)
        else:
            cpu, cpu_w = torch.ops.opmask_fast.roi_align_weighted(x, rois, 0.5, *size, args[4], args[5], roi_map,
                                                                  MODES[mode])
            torch.testing.assert_close(weights, cpu_w, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
        torch.testing.assert_close(out, cpu, rtol=2e-6 if dtype == torch.float32 else 1e-13, atol=1e-6)


@pytest.mark.skipif(not _extension.has_C(), reason=f"needs opmask_fast._C ({_extension.load_error()})")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["as_is", "feature_std", "feature_range"])
def test_half_precision_matches_the_cpu_kernel(emu, dtype, mode):
    """Half inputs accumulate in float32 and are rounded as stored; the weight is the statistic of the stored
    (rounded) values, as the CPU kernel reads them back: equal, to float rounding, to the float64 statistic of the
    emulated plain pooling's output and, for the standalone add on the CPU kernel's features, to the CPU's weights;
    against the CPU's fused weights, where a few pooled outputs may round one step apart, to 1e-3."""
    x, rois, roi_map = _inputs(11, dtype=dtype)
    if mode == "as_is":
        out, _ = emulated_roi_align(emu, x, rois, (7, 7), 0.5, 2, True, roi_map=roi_map)
        cpu = torch.ops.opmask_fast.roi_align(x, rois, 0.5, 7, 7, 2, True, roi_map)
    else:
        out, weights = emulated_roi_align(emu, x, rois, (7, 7), 0.5, 2, True, roi_map=roi_map, map_weight=mode)
        cpu, cpu_w = torch.ops.opmask_fast.roi_align_weighted(x, rois, 0.5, 7, 7, 2, True, roi_map, MODES[mode])
        torch.testing.assert_close(weights, cpu_w, rtol=1e-3, atol=0)
        pooled, _ = emulated_roi_align(emu, x, rois, (7, 7), 0.5, 2, True)  # the values the weighted pooling stores
        exact = reference.map_gain(pooled.double(), roi_map.double(), mode)
        torch.testing.assert_close(weights.double(), exact, rtol=1e-6, atol=0)
        features = torch.ops.opmask_fast.roi_align(x, rois, 0.5, 7, 7, 2, True, None)
        added, added_w = emulated_add_weighted_map(emu, features, roi_map, mode)
        exp, exp_w = torch.ops.opmask_fast.add_weighted_map(features, roi_map, MODES[mode])
        torch.testing.assert_close(added_w, exp_w, rtol=1e-6, atol=0)
        torch.testing.assert_close(added, exp, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, cpu, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["none", "feature_std", "feature_range"])
def test_multi_level_matches_roi_align_per_level(emu, dtype, mode):
    """Each RoI pooled from its own level (and weighted by its own statistics) as roi_align on that level alone."""
    gen = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 30, s, s + 3, generator=gen, dtype=torch.float64).to(dtype) for s in (24, 12, 6)]
    scales = [0.25, 0.125, 0.0625]
    rois = random_rois(14, 2, 24, 27, scale=0.25, gen=gen).to(dtype)
    levels = torch.randint(0, 3, (14,), generator=gen)
    roi_map = torch.rand(14, 7, 7, generator=gen, dtype=torch.float64).to(dtype)
    out = poisoned((14, 30, 7, 7), dtype)
    data = (P * 3)(*(f.data_ptr() for f in feats))
    heights, widths = (I64 * 3)(*(f.shape[2] for f in feats)), (I64 * 3)(*(f.shape[3] for f in feats))
    call(emu.emu_multi_level_roi_align, code(dtype), I64(3), data, heights, widths,
         (ctypes.c_double * 3)(*scales), ptr(rois), ptr(levels), ptr(roi_map), ptr(out), I64(MODES[mode]),
         I64(2), I64(30), I64(14), I64(7), I64(7), I64(2), ctypes.c_int(1))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for lv in range(3):
        sel = levels == lv
        exp = reference.roi_align(feats[lv].double(), rois[sel].double(), (7, 7), scales[lv], 2, True,
                                  roi_map=roi_map[sel].double(), map_weight=mode)
        torch.testing.assert_close(out[sel].double(), exp, **tol)


def test_multi_level_refuses_a_level_out_of_range(emu):
    x = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0], [0, 2.0, 2.0, 6.0, 6.0]])
    out = poisoned((2, 4, 2, 2), torch.float32)
    levels = torch.tensor([0, 1])  # level 1 of a one-level pyramid
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT"):
        call(emu.emu_multi_level_roi_align, ctypes.c_int(0), I64(1), (P * 1)(x.data_ptr()), (I64 * 1)(8),
             (I64 * 1)(8), (ctypes.c_double * 1)(1.0), ptr(rois), ptr(levels), P(None), ptr(out),
             I64(0), I64(1), I64(4), I64(2), I64(2), I64(2), I64(2), ctypes.c_int(1))


@pytest.mark.parametrize("empty", [(0, 5), (5, 0)])
def test_an_empty_level_reads_nothing(emu, empty):
    """Samples within a pixel of an empty axis tap nothing (they once read pixel -1): the map alone, and no gradient
    written."""
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    e = torch.randn(1, 4, *empty, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0], [0, -0.6, -0.3, 0.4, 0.2], [0, 1.0, 1.0, 6.0, 5.0]],
                        dtype=torch.float64)
    levels = torch.tensor([1, 1, 0])
    roi_map = torch.rand(3, 2, 2, dtype=torch.float64)
    out = poisoned((3, 4, 2, 2), torch.float64)
    call(emu.emu_multi_level_roi_align, code(torch.float64), I64(2), (P * 2)(x.data_ptr(), e.data_ptr()),
         (I64 * 2)(8, empty[0]), (I64 * 2)(8, empty[1]), (ctypes.c_double * 2)(1.0, 0.5), ptr(rois), ptr(levels),
         ptr(roi_map), ptr(out), I64(0), I64(1), I64(4), I64(3), I64(2), I64(2), I64(2), ctypes.c_int(1))
    torch.testing.assert_close(out[:2], roi_map[:2, None].expand(2, 4, 2, 2), rtol=0, atol=0)
    exp = reference.roi_align(x, rois[2:], (2, 2), 1.0, 2, True, roi_map=roi_map[2:])
    torch.testing.assert_close(out[2:], exp, rtol=1e-12, atol=1e-12)
    ge = torch.zeros(e.shape, dtype=torch.float64)
    call(emu.emu_roi_align_backward, code(torch.float64), ptr(torch.ones(2, 4, 2, 2, dtype=torch.float64)),
         ptr(rois[:2].contiguous()), ptr(ge), *map(I64, (*e.shape, 2, 2, 2)), ctypes.c_double(0.5), I64(2),
         ctypes.c_int(1))
    assert ge.numel() == 0


def emulated_add_weighted_map(emu, features, roi_map, mode):
    out = poisoned(features.shape, features.dtype)
    weights = poisoned((features.shape[0],), acc(features.dtype))
    k, c, h, w = features.shape
    call(emu.emu_add_weighted_map, code(features.dtype), ptr(features), ptr(roi_map), ptr(out),
         ptr(weights), I64(MODES[mode]), I64(k), I64(c), I64(h * w))
    return out, weights


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["none", "feature_std", "feature_range"])
@pytest.mark.parametrize("case", ["random", "two_groups", "nonfinite", "one_bin", "flat_map", "one_value"])
def test_add_weighted_map_matches_the_reference(emu, dtype, mode, case):
    """The standalone op's statistics kernel and add, on random features (one and two channel groups), features with
    NaN and infinity in some RoIs (weight 0 there), a one-bin map (its std is NaN: weight 0), a flat map (the 1e-6
    floor) and one value per RoI (its std is NaN)."""
    gen = torch.Generator().manual_seed(7)
    shape = {"two_groups": (5, 40, 7, 7), "one_bin": (4, 9, 1, 1), "one_value": (3, 1, 1, 1)}.get(case, (6, 8, 5, 4))
    features = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1
    roi_map = torch.rand(shape[0], *shape[2:], generator=gen, dtype=torch.float64)
    if case == "nonfinite":
        features[1, 2, 0, 0] = float("nan")
        features[3, 0, 1, 1] = float("inf")
        features[4, 5, 2, 3] = -float("inf")
    if case == "flat_map":
        roi_map[:] = 0.25
    features, roi_map = features.to(dtype), roi_map.to(dtype)
    out, weights = emulated_add_weighted_map(emu, features, roi_map, mode)
    exp, exp_w = reference.add_weighted_map(features.double(), roi_map.double(), mode)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.double(), exp_w, **tol)
    torch.testing.assert_close(out.double(), exp, equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c,size", SHAPES[:2])
def test_roi_align_backward_matches_the_reference(emu, dtype, c, size):
    """The atomics' scatter of each output's gradient, against the reference's gradient."""
    x, rois, _ = _inputs(9, c=c, size=size, dtype=dtype)
    grad = torch.randn(rois.shape[0], c, *size, generator=torch.Generator().manual_seed(4), dtype=dtype)
    gx = torch.zeros(x.shape, dtype=acc(dtype))  # the kernel accumulates into a zeroed buffer, as the launcher's
    call(emu.emu_roi_align_backward, code(dtype), ptr(grad), ptr(rois), ptr(gx),
         *map(I64, (*x.shape, rois.shape[0], *size)), ctypes.c_double(0.5), I64(0), ctypes.c_int(1))
    xr = x.double().requires_grad_()
    exp = reference.roi_align(xr, rois.double(), size, 0.5, 0, True)
    (ex,) = torch.autograd.grad(exp, xr, grad.double())
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx.double(), ex, **tol)


def test_the_emulation_refuses_a_barrier_under_a_divergent_branch(emu):
    """The check that the tests above rely on: threads that pass different numbers of barriers fail the launch."""
    with pytest.raises(RuntimeError, match="barriers"):
        call(emu.emu_divergent_barrier)


def test_the_cuda_kernels_run_their_plans():
    """The launchers in csrc/cuda run the plans the emulation runs (no kernel or launch of their own)."""
    for name in ("roi_align_kernel.cu", "multi_level_roi_align_kernel.cu", "add_weighted_map_kernel.cu",
                 "nms_kernel.cu"):
        with open(os.path.join(ROOT, "csrc", "cuda", name)) as f:
            src = f.read()
        assert "_plan<" in src and "__global__" not in src and "<<<" not in src, name
