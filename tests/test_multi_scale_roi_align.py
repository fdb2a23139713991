"""multi_scale_roi_align: level assignment, torchvision MultiScaleRoIAlign parity, input order, roi_map, grads."""

from __future__ import annotations

import math

import pytest
import torch

from opmask_fast.ops import multi_scale_roi_align, roi_align
from opmask_fast.ops.multi_scale_roi_align import assign_levels

tv_ops = pytest.importorskip("torchvision.ops")

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def pyramid(n: int, c: int, size: int, *, gen: torch.Generator, dtype=torch.float32):
    return [torch.randn(n, c, size // 4 // 2**i, size // 4 // 2**i, generator=gen, dtype=dtype) for i in range(4)]


def random_boxes(k: int, size: int, *, gen: torch.Generator):
    side = torch.exp(torch.rand(k, 2, generator=gen) * math.log(size * 0.9 / 4)) * 4  # 4 .. 0.9*size, log-uniform
    xy = torch.rand(k, 2, generator=gen) * (size - side)
    return torch.cat([xy, xy + side], dim=1)


def test_assign_levels_boundaries():
    def box(side: float):
        return torch.tensor([[0.0, 0.0, side, side]])

    lv = lambda side: int(assign_levels(box(side), min_level=2, max_level=5)[0]) + 2  # noqa: E731
    assert lv(224) == 4 and lv(223) == 3 and lv(112) == 3 and lv(111.5) == 2
    assert lv(448) == 5 and lv(10000) == 5 and lv(1) == 2 and lv(0) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_levels_of_half_precision_boxes_as_float32(dtype):
    """Half-precision boxes get the levels of the same (rounded) boxes in float32, as torchvision's LevelMapper
    gives them: a float16 area overflows past 65504 (a 300 x 300 box), a bfloat16 product keeps 8 bits."""
    boxes = torch.tensor([[0.0, 0.0, 300, 300], [10, 10, 266, 266], [0, 0, 390, 290], [0, 0, 452, 444],
                          [5, 5, 60, 40], [0, 0, 1000, 900]]).to(dtype)
    ours = assign_levels(boxes, min_level=2, max_level=5)
    assert torch.equal(ours, assign_levels(boxes.float(), min_level=2, max_level=5))
    mapper = tv_ops.poolers.LevelMapper(2, 5)
    assert torch.equal(ours, mapper([boxes]).to(torch.int64))


def test_matches_torchvision_multiscale():
    gen = torch.Generator().manual_seed(0)
    size = 256
    feats = pyramid(2, 6, size, gen=gen)
    boxes = [random_boxes(60, size, gen=gen), random_boxes(45, size, gen=gen)]
    names = [f"p{i}" for i in range(2, 6)]
    tv = tv_ops.MultiScaleRoIAlign(names, (7, 5), sampling_ratio=2)
    expected = tv(dict(zip(names, feats)), boxes, [(size, size)] * 2)
    ours = multi_scale_roi_align(feats, boxes, (7, 5), spatial_scales=SCALES, sampling_ratio=2, aligned=False)
    torch.testing.assert_close(ours, expected)


def test_order_roi_map_and_gradients():
    gen = torch.Generator().manual_seed(1)
    size = 512
    feats = [f.requires_grad_() for f in pyramid(2, 3, size, gen=gen, dtype=torch.float64)]
    boxes = [random_boxes(40, size, gen=gen).double(), random_boxes(30, size, gen=gen).double()]
    boxes[1][5] = torch.tensor([10.0, 20.0, 500.0, 490.0])  # a P5 box
    roi_map = torch.randn(70, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    out = multi_scale_roi_align(feats, boxes, 4, spatial_scales=SCALES, roi_map=roi_map)
    # Box by box against a single-level roi_align on the level it belongs to.
    allb = torch.cat(boxes)
    level = assign_levels(allb, min_level=2, max_level=5)
    assert set(level.tolist()) == {0, 1, 2, 3}, "the boxes should cover every level"
    batch = torch.cat([torch.zeros(40), torch.ones(30)]).double()
    for i in [0, 5, 39, 40, 45, 69]:
        lvl = int(level[i])
        rois = torch.cat([batch[i : i + 1, None], allb[i : i + 1]], dim=1)
        one = roi_align(feats[lvl], rois, 4, SCALES[lvl], 0, True) + roi_map[i]
        torch.testing.assert_close(out[i : i + 1], one)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, feats + [roi_map], g)
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads[:4])
    torch.testing.assert_close(grads[4], g.sum(1))


def test_empty_and_bad_scales():
    gen = torch.Generator().manual_seed(2)
    feats = pyramid(1, 2, 128, gen=gen)
    out = multi_scale_roi_align(feats, [torch.zeros(0, 4)], 7, spatial_scales=SCALES)
    assert out.shape == (0, 2, 7, 7)
    with pytest.raises(ValueError, match="powers of 1/2"):
        multi_scale_roi_align(feats, [torch.zeros(0, 4)], 7, spatial_scales=[1 / 4, 1 / 6, 1 / 16, 1 / 32])
    with pytest.raises(ValueError, match="one spatial scale per"):
        multi_scale_roi_align(feats, [torch.zeros(0, 4)], 7, spatial_scales=SCALES[:3])
    boxes = [torch.tensor([[1.0, 2, 30, 40]])]
    for scales in ([1 / 4, 0.0, 1 / 16, 1 / 32], [1 / 4, -1 / 8, 1 / 16, 1 / 32]):
        with pytest.raises(ValueError, match="spatial_scales\\[1\\]"):
            multi_scale_roi_align(feats, boxes, 7, spatial_scales=scales)
    for static in (False, True):
        with torch.no_grad():
            with pytest.raises(ValueError, match="output_size"):
                multi_scale_roi_align(feats, boxes, (3,), spatial_scales=SCALES, static=static)
            with pytest.raises(ValueError, match="features\\[2\\]"):
                multi_scale_roi_align([*feats[:2], feats[2].half(), feats[3]], boxes, 7, spatial_scales=SCALES,
                                      static=static)
            with pytest.raises(ValueError, match="features\\[1\\]"):
                multi_scale_roi_align([feats[0], feats[1][:, :1], *feats[2:]], boxes, 7, spatial_scales=SCALES,
                                      static=static)


@pytest.mark.parametrize("num_boxes", [1, 0])
@pytest.mark.parametrize("with_map", [False, True])
def test_levels_without_boxes_get_zero_gradients_as_torchvision(num_boxes, with_map):
    # 4 levels of a 64x64 image; one 10x10 box lands on P2, so P3-P5 have no box (none at all for num_boxes=0).
    gen = torch.Generator().manual_seed(3)
    feats = [f.requires_grad_() for f in pyramid(1, 3, 64, gen=gen, dtype=torch.float64)]
    boxes = [torch.tensor([[5.0, 7.0, 15.0, 17.0]], dtype=torch.float64)[:num_boxes]]
    roi_map = torch.randn(num_boxes, 7, 7, generator=gen, dtype=torch.float64, requires_grad=True) if with_map else None
    out = multi_scale_roi_align(feats, boxes, 7, spatial_scales=SCALES, sampling_ratio=2, aligned=False,
                                roi_map=roi_map)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    inputs = feats + ([roi_map] if with_map else [])
    grads = torch.autograd.grad(out, inputs, g)  # raises when a level is left out of the graph
    names = [f"p{i}" for i in range(2, 6)]
    tv_feats = [f.detach().clone().requires_grad_() for f in feats]
    tv = tv_ops.MultiScaleRoIAlign(names, 7, sampling_ratio=2)
    expected = tv(dict(zip(names, tv_feats)), boxes, [(64, 64)])
    torch.testing.assert_close(out - (roi_map[:, None] if with_map else 0), expected)
    tv_grads = torch.autograd.grad(expected, tv_feats, g)
    for lvl, (ours, theirs) in enumerate(zip(grads, tv_grads)):
        assert ours.shape == feats[lvl].shape
        torch.testing.assert_close(ours, theirs)
    assert all(not gr.any() for gr in grads[1 if num_boxes else 0:4])
    if with_map:
        torch.testing.assert_close(grads[4], g.sum(1))
    # .backward() into leaves: every level's .grad is a zero tensor of its shape, not None.
    multi_scale_roi_align(feats, boxes, 7, spatial_scales=SCALES, roi_map=roi_map).sum().backward()
    assert all(f.grad is not None and f.grad.shape == f.shape for f in feats)
    assert all(not f.grad.any() for f in feats[1 if num_boxes else 0:])


def test_no_graph_work_without_grad():
    gen = torch.Generator().manual_seed(4)
    feats = pyramid(1, 2, 64, gen=gen)
    out = multi_scale_roi_align(feats, [torch.tensor([[5.0, 7.0, 15.0, 17.0]])], 7, spatial_scales=SCALES)
    assert out.grad_fn is None
    with torch.no_grad():
        feats = [f.requires_grad_() for f in feats]
        assert multi_scale_roi_align(feats, [torch.zeros(0, 4)], 7, spatial_scales=SCALES).grad_fn is None


def test_compile_with_empty_levels():
    gen = torch.Generator().manual_seed(5)
    feats = [f.requires_grad_() for f in pyramid(1, 2, 64, gen=gen)]
    boxes = [torch.tensor([[5.0, 7.0, 15.0, 17.0]])]
    f = lambda *fs: multi_scale_roi_align(list(fs), boxes, 7, spatial_scales=SCALES).sum()  # noqa: E731
    grads = torch.autograd.grad(torch.compile(f, backend="aot_eager")(*feats), feats)
    torch.testing.assert_close(grads, torch.autograd.grad(f(*feats), feats))
