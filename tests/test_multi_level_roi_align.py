"""multi_level_roi_align (the FPN pooler in one launch): equal to the float64 reference and, RoI by RoI, to roi_align
on the RoI's own level; edge boxes, empty inputs, every level count up to 8; clear errors for bad levels, batch
indices and arguments; opcheck; export with dynamic feature sizes; CUDA against CPU where a GPU is present."""

import pytest
import torch

from opmask_fast import _extension
from opmask_fast.ops import multi_level_roi_align, multi_scale_roi_align, reference, roi_align
from opmask_fast.ops.multi_scale_roi_align import assign_levels

needs_c = pytest.mark.skipif(not _extension.has_C(), reason="needs the compiled extension")
CUDA = torch.cuda.is_available() and _extension.has_C() and _extension.cuda_built()


def _pyramid(n, c, sizes, *, gen, dtype=torch.float64):
    return [torch.randn(n, c, h, w, generator=gen, dtype=dtype) for h, w in sizes]


def _rois(k, n, image, *, gen):
    """Boxes of every size over an image (H, W), some outside it, zero-area or inverted."""
    h, w = image
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([w * 1.2, h * 1.2]) - 0.1 * w
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) ** 2 * torch.tensor([w, h]) - 2.0
    b = torch.randint(0, n, (k, 1), generator=gen).double()
    return torch.cat([b, xy, xy + wh], dim=1)


CASES = [  # (levels' (H, W), image (H, W), channels, output size, sampling ratio, aligned, with roi_map)
    ([(17, 23), (9, 12), (5, 6), (3, 3)], (68, 92), 5, (7, 7), 0, True, True),
    ([(16, 16), (8, 8)], (64, 64), 9, (14, 14), 2, True, False),
    ([(13, 7), (7, 4), (4, 2)], (52, 28), 3, (3, 5), 0, False, True),
    ([(11, 11)], (44, 44), 4, (2, 2), 1, True, False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_and_per_level_roi_align(case, dtype):
    sizes, image, c, out_size, ratio, aligned, with_map = CASES[case]
    gen = torch.Generator().manual_seed(100 + case)
    feats = _pyramid(2, c, sizes, gen=gen)
    scales = [sizes[0][0] / image[0] / 2**i for i in range(len(sizes))]
    rois = _rois(40, 2, image, gen=gen)
    levels = torch.randint(0, len(sizes), (40,), generator=gen)
    roi_map = torch.randn(40, *out_size, generator=gen, dtype=torch.float64) if with_map else None
    expected = reference.multi_level_roi_align(feats, rois, levels, out_size, scales, ratio, aligned, roi_map)
    cast = (lambda t: None if t is None else t.to(dtype))  # noqa: E731
    got = multi_level_roi_align([f.to(dtype) for f in feats], rois.to(dtype), levels, out_size, scales, ratio, aligned,
                                roi_map=cast(roi_map))
    tol = dict(rtol=0, atol=0) if dtype == torch.float64 and not _extension.has_C() else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), expected, **tol)
    for k in range(40):  # the same arithmetic as one roi_align call on the RoI's level, bit for bit
        lv = int(levels[k])
        one = roi_align(feats[lv].to(dtype), rois[k:k + 1].to(dtype), out_size, scales[lv], ratio, aligned,
                        roi_map=None if roi_map is None else cast(roi_map[k:k + 1]))
        assert torch.equal(got[k:k + 1], one), k


def test_edges_empty_and_eight_levels():
    gen = torch.Generator().manual_seed(7)
    sizes = [(64 >> i, 48 >> i) for i in range(6)] + [(1, 1), (1, 1)]
    feats = _pyramid(1, 3, sizes, gen=gen)
    scales = [1 / 2**i for i in range(8)]
    edge = torch.tensor([[0, -20.0, -20, -10, -10], [0, 60.0, 70, 90, 99], [0, 4.0, 4, 4, 4], [0, 7.0, 6, 3, 2],
                         [0, 0.0, 0, 47, 63], [0, 5.2, 3.1, 5.6, 3.3], [0, -3.0, -2, 51, 66], [0, 2.5, 0, 2.5, 64]],
                        dtype=torch.float64)
    levels = torch.arange(8)
    got = multi_level_roi_align(feats, edge, levels, 3, scales, 0, True)
    expected = reference.multi_level_roi_align(feats, edge, levels, (3, 3), scales, 0, True)
    torch.testing.assert_close(got, expected)
    assert got[0].abs().max() == 0  # a box wholly outside the map reads zeros
    empty = multi_level_roi_align(feats, edge[:0], levels[:0], (2, 5), scales)
    assert empty.shape == (0, 3, 2, 5)
    no_channels = multi_level_roi_align([f[:, :0] for f in feats], edge, levels, 2, scales)
    assert no_channels.shape == (8, 0, 2, 2)


def test_static_pooler_equals_the_per_level_pooler():
    """multi_scale_roi_align(static=True) (levels assigned on the device, one launch) equals the per-level pooler."""
    gen = torch.Generator().manual_seed(3)
    feats = _pyramid(2, 6, [(200, 160), (100, 80), (50, 40), (25, 20)], gen=gen, dtype=torch.float32)
    boxes = [_rois(60, 1, (800, 640), gen=gen)[:, 1:].float().clamp(0, 639) for _ in range(2)]
    roi_map = torch.randn(120, 7, 7, generator=gen)
    kwargs = dict(spatial_scales=[1 / 4, 1 / 8, 1 / 16, 1 / 32], sampling_ratio=0, aligned=True, roi_map=roi_map)
    with torch.no_grad():
        static = multi_scale_roi_align(feats, boxes, 7, static=True, **kwargs)
    plain = multi_scale_roi_align(feats, boxes, 7, **kwargs)
    assert torch.equal(static, plain)
    levels = assign_levels(torch.cat(boxes), min_level=2, max_level=5)
    assert len(set(levels.tolist())) == 4  # every level is used
    with pytest.raises(ValueError, match="inference"):
        multi_scale_roi_align([f.requires_grad_() for f in feats], boxes, 7, static=True, **kwargs)


def test_bad_inputs_are_refused():
    gen = torch.Generator().manual_seed(1)
    feats = _pyramid(2, 3, [(8, 8), (4, 4)], gen=gen)
    rois = torch.tensor([[0, 1.0, 1, 6, 6], [1, 2.0, 2, 30, 30]], dtype=torch.float64)
    scales = [1.0, 0.5]
    with pytest.raises(ValueError, match="level 2"):
        multi_level_roi_align(feats, rois, torch.tensor([0, 2]), 2, scales)
    with pytest.raises(ValueError, match="batch index 3"):
        multi_level_roi_align(feats, rois + torch.tensor([3.0, 0, 0, 0, 0]), torch.tensor([0, 1]), 2, scales)
    with pytest.raises(ValueError, match="spatial scales"):
        multi_level_roi_align(feats, rois, torch.tensor([0, 1]), 2, [1.0])
    with pytest.raises(ValueError, match="int64"):
        multi_level_roi_align(feats, rois, torch.tensor([0, 1], dtype=torch.int32), 2, scales)
    with pytest.raises(ValueError, match="features\\[1\\]"):
        multi_level_roi_align([feats[0], feats[1][:, :2]], rois, torch.tensor([0, 1]), 2, scales)
    with pytest.raises(ValueError, match="1 to 8"):
        multi_level_roi_align(feats * 5, rois, torch.tensor([0, 1]), 2, scales * 5)
    # Unvalidated (the model's call): the kernel itself refuses a level out of range, naming the RoI.
    with pytest.raises(RuntimeError, match="RoI 1 has level 5"):
        multi_level_roi_align(feats, rois, torch.tensor([0, 5]), 2, scales, validate=False)


def test_meta_tensors_give_shapes():
    feats = [torch.zeros(2, 3, 8, 8, device="meta"), torch.zeros(2, 3, 4, 4, device="meta")]
    levels = torch.zeros(5, dtype=torch.int64, device="meta")
    out = multi_level_roi_align(feats, torch.zeros(5, 5, device="meta"), levels, (2, 3), [1.0, 0.5])
    assert out.shape == (5, 3, 2, 3) and out.device.type == "meta"


def test_every_scale_checked_and_no_silent_missing_gradient():
    gen = torch.Generator().manual_seed(4)
    feats = _pyramid(1, 2, [(8, 8), (4, 4)], gen=gen)
    rois = torch.tensor([[0, 1.0, 1, 6, 6], [0, 2.0, 2, 7, 7]], dtype=torch.float64)
    levels = torch.tensor([0, 1])
    for bad in (float("nan"), 0.0, -0.5, float("inf")):  # the coarser level's scale, not only the largest
        with pytest.raises(ValueError, match="spatial_scales\\[1\\]"):
            multi_level_roi_align(feats, rois, levels, 2, [1.0, bad])
    with torch.no_grad():
        multi_level_roi_align(feats, rois, levels, 2, [1.0, 0.5])  # the inference pooler
    feats = [f.requires_grad_() for f in feats]
    with pytest.raises(ValueError, match="no backward"):
        multi_level_roi_align(feats, rois, levels, 2, [1.0, 0.5])
    # Called directly, the op's output needs a gradient it cannot give: backward says so (never a gradient of None).
    out = torch.ops.opmask_fast.multi_level_roi_align(feats, rois, levels, [1.0, 0.5], 2, 2, 0, True, None, 0)
    with pytest.raises(RuntimeError, match="no backward"):
        out.sum().backward()


@pytest.mark.parametrize("empty", [(0, 4), (4, 0), (0, 0)])
@pytest.mark.parametrize("aligned", [True, False])
def test_an_empty_level_pools_zeros_unvalidated_and_is_refused_validated(empty, aligned):
    # A sample within a pixel of an empty axis once read pixel -1 (a crash); the kernels and the reference now read
    # nothing there: zeros, plus the map.
    gen = torch.Generator().manual_seed(5)
    feats = [torch.randn(1, 3, 8, 8, generator=gen, dtype=torch.float64),
             torch.randn(1, 3, *empty, generator=gen, dtype=torch.float64)]
    rois = torch.tensor([[0, 0.0, 0, 2, 2], [0, -0.7, -0.4, 0.3, 0.2], [0, 1.0, 1, 6, 5]], dtype=torch.float64)
    levels = torch.tensor([1, 1, 0])
    roi_map = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = multi_level_roi_align(feats, rois, levels, 2, [1.0, 0.5], 2, aligned, roi_map=roi_map, validate=False)
        expected = reference.multi_level_roi_align(feats, rois, levels, (2, 2), [1.0, 0.5], 2, aligned, roi_map)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[:2], roi_map[:2, None].expand(2, 3, 2, 2))
    if _extension.has_C():  # the compiled roi_align called directly (the public op refuses an empty input)
        one = torch.ops.opmask_fast.roi_align(feats[1], rois[:2], 0.5, 2, 2, 2, aligned, None)
        assert one.shape == (2, 3, 2, 2) and one.abs().max() == 0
    with pytest.raises(ValueError, match="features\\[1\\] has an empty spatial size"):
        multi_level_roi_align(feats, rois, levels, 2, [1.0, 0.5], 2, aligned)


@needs_c
def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    feats = _pyramid(2, 3, [(9, 7), (5, 4)], gen=gen, dtype=torch.float32)
    rois = _rois(6, 2, (18, 14), gen=gen).float()
    levels = torch.tensor([0, 1, 1, 0, 1, 0])
    roi_map = torch.randn(6, 3, 2, generator=gen)
    op = torch.ops.opmask_fast.multi_level_roi_align.default
    for args in [(feats, rois, levels, [0.5, 0.25], 3, 2, 0, True, roi_map), (feats, rois, levels, [0.5, 0.25], 2, 2,
                                                                              2, False, None)]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_exports_with_dynamic_feature_sizes():
    class Pool(torch.nn.Module):
        def forward(self, p2, p3, boxes):
            return multi_scale_roi_align([p2, p3], [boxes], 4, spatial_scales=[0.25, 0.125], static=True)

    gen = torch.Generator().manual_seed(5)
    p2, p3 = torch.randn(1, 4, 24, 20, generator=gen), torch.randn(1, 4, 12, 10, generator=gen)
    boxes = torch.tensor([[0.0, 0, 90, 70], [3.0, 5, 20, 30], [10.0, 10, 11, 12]])
    h, w = torch.export.Dim("h", min=2, max=512), torch.export.Dim("w", min=2, max=512)
    with torch.no_grad():
        ep = torch.export.export(Pool(), (p2, p3, boxes),
                                 dynamic_shapes=({2: 2 * h, 3: 2 * w}, {2: h, 3: w}, None), strict=False)
        q2, q3 = torch.randn(1, 4, 40, 34, generator=gen), torch.randn(1, 4, 20, 17, generator=gen)
        assert torch.equal(ep.module()(q2, q3, boxes), Pool()(q2, q3, boxes))


@needs_c
def test_validated_call_compiles_without_a_graph_break():
    """With the default validate=True the op compiles whole (its data checks are skipped when traced, as roi_align's):
    a host read of the levels would break the graph."""
    gen = torch.Generator().manual_seed(6)
    p2, p3 = torch.randn(1, 4, 24, 20, generator=gen), torch.randn(1, 4, 12, 10, generator=gen)
    rois = torch.tensor([[0.0, 0, 0, 90, 70], [0.0, 3, 5, 20, 30]])
    levels = torch.tensor([1, 0])

    def pool(a, b, r, lv):
        return multi_level_roi_align([a, b], r, lv, 4, [0.25, 0.125], 2, True)

    compiled = torch.compile(pool, fullgraph=True, backend="eager")
    assert torch.equal(compiled(p2, p3, rois, levels), pool(p2, p3, rois, levels))


@pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(11)
    feats = _pyramid(2, 32, [(50, 68), (25, 34), (13, 17), (7, 9)], gen=gen, dtype=torch.float32)
    rois = _rois(300, 2, (200, 272), gen=gen).float()
    levels = torch.randint(0, 4, (300,), generator=gen)
    roi_map = torch.randn(300, 14, 14, generator=gen)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    cpu = multi_level_roi_align([f.to(dtype) for f in feats], rois, levels, 14, scales, roi_map=roi_map.to(dtype))
    gpu = multi_level_roi_align([f.to(dtype).cuda() for f in feats], rois.cuda(), levels.cuda(), 14, scales,
                                roi_map=roi_map.to(dtype).cuda())
    # float32: the GPU contracts multiply-adds (FMA) and sums the samples in another order than the CPU, a few ulp of
    # the bin's sum apart (seen on an H200: up to 3.4e-5 absolute on 2 of 0.5 million outputs at 1e-5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gpu.float().cpu(), cpu.float(), **tol)
