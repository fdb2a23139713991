"""nms / batched_nms: torchvision parity (indices and order), threshold edges, duplicates, categories, large
coordinates, float16, validation, opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch

from opmask_fast import _extension
from opmask_fast.ops import batched_nms, nms, reference

tv_ops = pytest.importorskip("torchvision.ops")

needs_c = pytest.mark.skipif(not _extension.has_C(), reason="opmask_fast._C is not built")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _extension.cuda_built()),
                                reason="needs a GPU and the CUDA kernels")


def random_boxes(n: int, *, gen: torch.Generator, size: float = 200.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("n,threshold", [(1, 0.5), (50, 0.3), (500, 0.5), (3000, 0.7), (800, 0.0), (800, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_torchvision(n, threshold, dtype):
    gen = torch.Generator().manual_seed(n)
    boxes = random_boxes(n, gen=gen, dtype=dtype)
    scores = torch.rand(n, generator=gen, dtype=dtype)
    expected = tv_ops.nms(boxes, scores, threshold)
    assert torch.equal(nms(boxes, scores, threshold), expected)
    if n <= 500:
        assert torch.equal(reference.nms(boxes, scores, threshold), expected)


def test_iou_just_above_and_below_threshold():
    # IoU of [0,0,10,10] and [0,0,10,h] is h / 10.
    base = torch.tensor([0.0, 0.0, 10.0, 10.0])
    for h, suppressed in [(5.0, False), (5.001, True), (4.999, False), (10.0, True)]:
        boxes = torch.stack([base, torch.tensor([0.0, 0.0, 10.0, h])])
        scores = torch.tensor([0.9, 0.8])
        keep = nms(boxes, scores, 0.5)
        assert torch.equal(keep, tv_ops.nms(boxes, scores, 0.5))
        assert keep.tolist() == ([0] if suppressed else [0, 1])
    # Exactly at the float32 rounding of the threshold: the comparison is done in double, as in torchvision.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]])
    for thr in (0.3, 0.29999, 0.30001):
        assert torch.equal(nms(boxes, torch.tensor([0.9, 0.8]), thr), tv_ops.nms(boxes, torch.tensor([0.9, 0.8]), thr))


def test_duplicates_and_ties_keep_torchvision_order():
    box = [1.0, 2.0, 11.0, 12.0]
    boxes = torch.tensor([box, box, [50.0, 50, 60, 60], box, [50.0, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.5])
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, tv_ops.nms(boxes, scores, 0.5))
    assert keep.tolist() == [1, 2]
    # All scores equal: the lower index wins.
    assert nms(boxes, torch.ones(5), 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("n,classes", [(10, 3), (900, 5), (5000, 80)])
def test_batched_nms_matches_torchvision(n, classes):
    gen = torch.Generator().manual_seed(n + classes)
    boxes = random_boxes(n, gen=gen)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, classes, (n,), generator=gen)
    expected = tv_ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)
    if n <= 900:
        assert torch.equal(reference.batched_nms(boxes, scores, idxs, 0.5), expected)


def per_class_nms(boxes, scores, idxs, threshold):
    """Oracle: plain NMS per category in float64, merged by descending score."""
    keep = []
    for c in idxs.unique():
        sel = torch.nonzero(idxs == c).squeeze(1)
        keep.append(sel[reference.nms(boxes[sel].double(), scores[sel].double(), threshold)])
    keep = torch.cat(keep).sort().values  # equal scores: lower index first
    return keep[torch.sort(scores[keep].double(), descending=True, stable=True).indices]


def test_batched_nms_large_coordinates_and_negative_categories():
    gen = torch.Generator().manual_seed(11)
    boxes = random_boxes(400, gen=gen, size=100.0, dtype=torch.float64) + 1.0e7  # offsets would lose precision
    scores = torch.rand(400, generator=gen, dtype=torch.float64)
    idxs = torch.randint(-3, 3, (400,), generator=gen) * 1000
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), per_class_nms(boxes, scores, idxs, 0.5))


def test_batched_nms_float16():
    gen = torch.Generator().manual_seed(12)
    boxes = random_boxes(600, gen=gen, size=1000.0).half()  # 80 classes x 1000 px would overflow a float16 offset
    scores = torch.rand(600, generator=gen).half()
    idxs = torch.randint(0, 80, (600,), generator=gen)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, per_class_nms(boxes.float(), scores.float(), idxs, 0.5))


def test_empty_and_validation():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.numel() == 0
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="NaN or inf"):
        nms(torch.tensor([[0.0, 0, float("nan"), 1]]), torch.ones(1), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        nms(boxes, torch.tensor([0.5, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="Tensor\\[N, 4\\]"):
        nms(boxes[:, :3], torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, torch.ones(3), 0.5)
    with pytest.raises(TypeError, match="integer"):
        batched_nms(boxes, torch.ones(2), torch.ones(2), 0.5)
    with pytest.raises(TypeError, match="floating"):
        nms(boxes.long(), torch.ones(2), 0.5)


@needs_c
def test_opcheck():
    gen = torch.Generator().manual_seed(13)
    boxes = random_boxes(40, gen=gen)
    scores = torch.rand(40, generator=gen)
    idxs = torch.randint(0, 3, (40,), generator=gen)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.opmask_fast.nms.default, (boxes, scores, 0.5), test_utils=tests)
    torch.library.opcheck(torch.ops.opmask_fast.batched_nms.default, (boxes, scores, idxs, 0.5), test_utils=tests)


@needs_c
def test_torch_compile():
    gen = torch.Generator().manual_seed(14)
    boxes = random_boxes(100, gen=gen)
    scores = torch.rand(100, generator=gen)
    idxs = torch.randint(0, 4, (100,), generator=gen)

    def f(b, s, i):
        keep = batched_nms(b * 2.0, s, i, 0.5)
        return keep, s[keep].sum()

    keep, total = torch.compile(f, backend="aot_eager")(boxes, scores, idxs)
    ek, et = f(boxes, scores, idxs)
    assert torch.equal(keep, ek)
    torch.testing.assert_close(total, et)


@needs_cuda
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 20000])
def test_cuda_matches_torchvision(n):
    gen = torch.Generator().manual_seed(15)
    boxes = random_boxes(n, gen=gen, size=1000.0).cuda()
    scores = (torch.randperm(n, generator=gen).float() / n).cuda()  # distinct: torchvision's CUDA sort is unstable
    idxs = torch.randint(0, 80, (n,), generator=gen).cuda()
    assert torch.equal(nms(boxes, scores, 0.7), tv_ops.nms(boxes, scores, 0.7))
    # torchvision's batched_nms offsets coordinates per category (changing IoU rounding); ours does not, so the
    # CPU kernel is the reference here.
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5).cpu(), batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))
    assert torch.equal(batched_nms(boxes.half(), scores.half(), idxs, 0.5).cpu(),
                       batched_nms(boxes.half().cpu(), scores.half().cpu(), idxs.cpu(), 0.5))


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 0.9])
def test_integer_grid_boxes_hit_the_threshold_exactly(threshold):
    # Small integer boxes give IoUs that are simple fractions, many of them equal to the threshold after rounding.
    gen = torch.Generator().manual_seed(16)
    xy = torch.randint(0, 6, (300, 2), generator=gen).float()
    wh = torch.randint(1, 5, (300, 2), generator=gen).float()
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(300, generator=gen)
    idxs = torch.randint(0, 3, (300,), generator=gen)
    assert torch.equal(nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))
    assert torch.equal(batched_nms(boxes, scores, idxs, threshold), tv_ops.batched_nms(boxes, scores, idxs, threshold))
    assert torch.equal(nms(boxes.double(), scores, threshold), tv_ops.nms(boxes.double(), scores.double(), threshold))
