"""The NMS CUDA kernels, run on the CPU: tests/cuda_emulation compiles csrc/cuda/nms_kernels.cuh with g++ under an
emulation of CUDA's block model (the `emu` fixture of tests/conftest.py) and runs each op's launch plan, with the
launchers' host side (the stable score sort, the gathers) written here as they write it. The kept indices must equal
the ops' (CPU kernels, or the references without the extension) for box counts around the 64-box mask words, tied
scores, duplicate boxes, -inf and NaN scores and max_keep cuts. The bitmask starts as all ones, so a mask word the
kernel skips would suppress every later box; the dynamic shared memory starts as 0xff bytes."""

from __future__ import annotations

import ctypes

import pytest
import torch

from cuda_emulation.emulation import I64, acc, call, code, ptr
from opmask_fast.ops import batched_nms, nms, nms_topk

DTYPES = [torch.float32, torch.float64]
SIZES = [1, 2, 63, 64, 65, 130, 300]


def _case(n, seed, *, classes=4, ties=False, invalid="", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], 1)
    if n > 4:
        boxes[3] = boxes[1]  # a duplicate box (IoU 1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).floor() / 4  # many equal scores: the stable order decides
    if n > 6:  # invalid candidates: "inf" (-inf scores), "inf_nan" (and a NaN, which batched_nms refuses)
        scores[2] = float("-inf") if invalid else scores[2]
        scores[5] = float("nan") if invalid == "inf_nan" else scores[5]
    idxs = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(dtype), scores.to(dtype), idxs


def _sorted(boxes, scores):
    """The launchers' host side: the stable descending score sort and the sorted boxes in the accumulation type."""
    order = torch.sort(scores, stable=True, descending=True).indices
    return order, boxes[order].to(acc(boxes.dtype)).contiguous()


def _grouped_keep(emu, sorted_boxes, sorted_scores, cls, threshold, max_keep):
    n = sorted_boxes.shape[0]
    group_order = torch.sort(cls, stable=True).indices
    keep = torch.zeros(n, dtype=torch.bool)
    call(emu.emu_nms_grouped, code(sorted_boxes.dtype), I64(n), ptr(group_order), ptr(sorted_boxes),
         ptr(sorted_scores), ptr(cls), ctypes.c_double(threshold), I64(max_keep), ptr(keep))
    return keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_bitmask_walk_equals_nms(emu, dtype, n, threshold):
    boxes, scores, _ = _case(n, n, ties=n % 2 == 1, dtype=dtype)
    order, sorted_boxes = _sorted(boxes, scores)
    keep = torch.zeros(n, dtype=torch.bool)
    call(emu.emu_nms_bitmask, code(sorted_boxes.dtype), I64(n), ctypes.c_double(threshold), ptr(sorted_boxes),
         ptr(keep))
    assert order[keep].tolist() == nms(boxes, scores, threshold).tolist()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_batched_nms_grouped_walk_equals_batched_nms(emu, dtype, n):
    """Every box a candidate (no scores passed), -inf scores included, as batched_nms keeps them."""
    boxes, scores, idxs = _case(n, 100 + n, ties=True, invalid="inf", dtype=dtype)
    order, sorted_boxes = _sorted(boxes, scores)
    keep = _grouped_keep(emu, sorted_boxes, None, idxs[order].contiguous(), 0.5, n)
    assert order[keep].tolist() == batched_nms(boxes, scores, idxs, 0.5).tolist()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,max_keep", [(1, 3), (63, 10), (65, 65), (130, 7), (300, 100), (300, 1000)])
@pytest.mark.parametrize("categories", [False, True])
def test_nms_topk_equals_the_op(emu, dtype, n, max_keep, categories):
    """The fixed-size result: the first max_keep kept indices in score order, -1 after them, and their count;
    invalid candidates (-inf, NaN) keep and suppress nothing; each category's walk stops at max_keep."""
    boxes, scores, idxs = _case(n, 200 + n, ties=True, invalid="inf_nan", dtype=dtype)
    order, sorted_boxes = _sorted(boxes, scores)
    sorted_scores = scores[order].to(acc(dtype)).contiguous()
    if categories:  # the launcher's host side after the grouped walk: rank the kept boxes, scatter, count
        keep = _grouped_keep(emu, sorted_boxes, sorted_scores, idxs[order].contiguous(), 0.5, max_keep)
        kept = order[keep][:max_keep]
        out = torch.cat([kept, torch.full((max_keep - kept.numel(),), -1, dtype=torch.long)])
        count = torch.tensor(kept.numel())
    else:
        out = torch.full((max_keep,), -1, dtype=torch.long)
        count = torch.zeros((), dtype=torch.long)
        call(emu.emu_nms_topk, code(sorted_boxes.dtype), I64(n), ctypes.c_double(0.5), ptr(sorted_boxes), ptr(order),
             ptr(sorted_scores), I64(max_keep), ptr(out), ptr(count))
    exp, exp_count = nms_topk(boxes, scores, 0.5, max_keep, idxs if categories else None)
    assert out.tolist() == exp.tolist() and int(count) == int(exp_count)


def test_the_grouped_walk_stops_a_category_at_max_keep(emu):
    """Disjoint boxes of one category: nothing is suppressed, so the walk keeps exactly max_keep of them."""
    boxes = torch.tensor([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(40)])
    scores = torch.linspace(1, 0, 40)
    order, sorted_boxes = _sorted(boxes, scores)
    keep = _grouped_keep(emu, sorted_boxes, scores[order].contiguous(), torch.zeros(40, dtype=torch.long), 0.5, 7)
    assert keep.nonzero().squeeze(1).tolist() == list(range(7))
