"""nms / batched_nms: torchvision parity (indices and order), threshold edges, duplicates, categories, large
coordinates, float16, validation, opcheck and torch.compile; the reference against torchvision and the C++ kernel on
threshold boundaries and ties, and property-based tests (hypothesis) over degenerate, inverted and far-out boxes.

Under OPMASK_FAST_NO_EXTENSION=1 the public ops run the reference: the tests through ``nms`` / ``batched_nms`` then
test the fallback, and those that need the kernel itself skip."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opmask_fast import _extension
from opmask_fast.ops import batched_nms, nms, reference

tv_ops = pytest.importorskip("torchvision.ops")

needs_c = pytest.mark.skipif(not _extension.has_C(),
                             reason=f"needs opmask_fast._C ({_extension.load_error()})")
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
    with pytest.raises(TypeError, match="iou_threshold"):
        nms(boxes, torch.ones(2), True)
    # NumPy's scalars are numbers, as torchvision takes them.
    assert nms(boxes, torch.tensor([0.9, 0.8]), np.float32(0.2)).tolist() == [0]
    assert batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), np.float64(0.3)).tolist() == [0, 1]


@needs_c
def test_opcheck():
    gen = torch.Generator().manual_seed(13)
    boxes = random_boxes(40, gen=gen)
    scores = torch.rand(40, generator=gen)
    idxs = torch.randint(0, 3, (40,), generator=gen)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.opmask_fast.nms.default, (boxes, scores, 0.5), test_utils=tests)
    torch.library.opcheck(torch.ops.opmask_fast.batched_nms.default, (boxes, scores, idxs, 0.5), test_utils=tests)


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


@needs_cuda
def test_cuda_categories_take_more_boxes_than_the_all_pairs_walk():
    """The all-pairs walk holds a row of one bit per box in shared memory (at most 393216 boxes); the per-category
    walk has no such limit, so batched NMS takes more boxes, with the CPU kernel's answer."""
    from opmask_fast.ops import nms_topk

    n = 400_000
    gen = torch.Generator().manual_seed(16)
    boxes = random_boxes(n, gen=gen, size=1000.0)
    scores = torch.randperm(n, generator=gen).float() / n
    idxs = torch.randint(0, 400, (n,), generator=gen)
    want = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(), want)
    keep, count = nms_topk(boxes.cuda(), scores.cuda(), 0.5, 1000, idxs.cuda())
    assert int(count) == 1000 and torch.equal(keep.cpu(), want[:1000])
    with pytest.raises(RuntimeError, match="at most 393216 boxes per call on CUDA"):
        nms(boxes.cuda(), scores.cuda(), 0.5)


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


def kernel_nms(boxes, scores, threshold):
    """The C++ kernel itself (not the public op, which is the reference under OPMASK_FAST_NO_EXTENSION=1)."""
    return torch.ops.opmask_fast.nms(boxes, scores, float(threshold)) if _extension.has_C() else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_reference_compares_the_iou_with_the_double_threshold(dtype):
    """Catches the reference NMS comparing its float32 IoU with the threshold rounded to float32, where torchvision and
    the C++ kernel compare it with the double threshold (bug: ``iou > iou_threshold`` on a float32 tensor).

    [0, 0, 10, 10] and [0, 0, 10, h] have the float32 IoU float32(h / 10): for h = 1, 2, 3, 4, 6, 8 that is just
    above h / 10 in double (suppressed) but equal to the threshold rounded to float32 (kept by the bug).
    """
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32  # IoU precision of all implementations
    scores = torch.tensor([0.9, 0.8], dtype=dtype)
    above = []
    for h in range(1, 10):
        t = h / 10
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, float(h)]], dtype=dtype)
        iou = float(torch.tensor(10.0 * h, dtype=cdtype) / torch.tensor(100.0, dtype=cdtype))
        expected = [0] if iou > t else [0, 1]
        above.append(iou > t)
        assert reference.nms(boxes, scores, t).tolist() == expected, (h, t, iou)
        assert reference.batched_nms(boxes, scores, torch.zeros(2, dtype=torch.long), t).tolist() == expected
        if dtype in (torch.float32, torch.float64):  # torchvision's CPU nms has no float16/bfloat16 kernel
            assert tv_ops.nms(boxes, scores, t).tolist() == expected
        if _extension.has_C():
            assert kernel_nms(boxes, scores, t).tolist() == expected
    assert any(above) == (cdtype == torch.float32), "the boxes must put float32 IoUs just above the threshold"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (not the extension)")
def test_reference_on_cuda_rounds_the_threshold_like_torchvision_cuda():
    """Catches a reference that compares like torchvision's CPU kernel on CUDA tensors too: torchvision's (and our)
    CUDA kernel compares with the threshold rounded to float32, so [0,0,10,10] / [0,0,10,3] at 0.3 keeps both."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]], device="cuda")
    scores = torch.tensor([0.9, 0.8], device="cuda")
    for dtype in (torch.float32, torch.float64):
        for t in (0.3, 0.7, 0.29999, 1 / 3):
            expected = tv_ops.nms(boxes.to(dtype), scores.to(dtype), t)
            assert torch.equal(reference.nms(boxes.to(dtype), scores.to(dtype), t), expected), (dtype, t)


def test_reference_tie_order_matches_kernel_and_torchvision():
    """Catches a reference NMS that visits equal scores in another order than torchvision and the C++ kernel (lower
    index first: a stable descending sort), e.g. a flipped ascending sort or an unstable sort. The public op checks
    this only where the reference is the fallback; here the reference is checked on every run."""
    gen = torch.Generator().manual_seed(17)
    box = [1.0, 2.0, 11.0, 12.0]
    cases = [
        (torch.tensor([box, box, [50.0, 50, 60, 60], box, [50.0, 50, 60, 60]]),
         torch.tensor([0.5, 0.9, 0.5, 0.9, 0.5])),
        (torch.tensor([box] * 6), torch.ones(6)),
    ]
    boxes = random_boxes(300, gen=gen, size=60.0)  # crowded: many overlaps among equal scores
    cases.append((boxes, torch.randint(0, 4, (300,), generator=gen).float() / 4))
    cases.append((boxes, torch.ones(300)))
    for boxes, scores in cases:
        expected = tv_ops.nms(boxes, scores, 0.5)
        assert torch.equal(reference.nms(boxes, scores, 0.5), expected)
        b64, s64 = boxes.double(), scores.double()
        assert torch.equal(reference.nms(b64, s64, 0.5), tv_ops.nms(b64, s64, 0.5))
        if _extension.has_C():
            assert torch.equal(kernel_nms(boxes, scores, 0.5), expected)
        idxs = torch.arange(boxes.shape[0]) % 3
        by_class = tv_per_class_nms(boxes, scores, idxs, 0.5)
        assert torch.equal(reference.batched_nms(boxes, scores, idxs, 0.5), by_class)
        if _extension.has_C():
            assert torch.equal(torch.ops.opmask_fast.batched_nms(boxes, scores, idxs, 0.5), by_class)


def tv_per_class_nms(boxes, scores, idxs, threshold):
    """Independent oracle for batched_nms: torchvision's nms per category (no coordinate offsets), merged by
    descending score, equal scores lower index first."""
    keep = [torch.zeros(0, dtype=torch.long)]
    for c in idxs.unique():
        sel = torch.nonzero(idxs == c).squeeze(1)
        keep.append(sel[tv_ops.nms(boxes[sel], scores[sel], threshold)])
    keep = torch.cat(keep).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


# Property-based tests: hypothesis draws the boxes; derandomized (the same examples on every run, no example database
# written) so that CI is reproducible. A failure prints the smallest failing example it found.
PROPERTY = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
THRESHOLDS = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.7, 0.75, 0.8, 0.9, 1.0]


def exact_iou(a, b) -> Fraction | None:
    """IoU of two (x, y, w, h) integer boxes as an exact fraction (None when the union is not positive)."""
    iw = max(min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]), 0)
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return Fraction(iw * ih, union) if union > 0 else None


@st.composite
def nms_inputs(draw):
    """Boxes on a grid of ``unit`` shifted by ``offset`` (far out of any image), some zero-width or inverted
    (x2 <= x1); scores with ties; a threshold that is often exactly the IoU of two of the boxes (which float32 may
    round either way), else one of THRESHOLDS or any float in [0, 1]."""
    n = draw(st.integers(0, 32))
    unit = draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 1 / 3]))
    offset = draw(st.sampled_from([0.0, -64.0, 1000.5, 3.0e5]))
    start = st.integers(0, 4)
    extent = st.sampled_from([-1, 0, 1, 1, 2, 2, 3, 3, 4, 5])  # <= 0: degenerate or inverted
    rows = draw(st.lists(st.tuples(start, start, extent, extent), min_size=n, max_size=n))
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64).reshape(n, 4) * unit
    boxes = boxes + offset
    tied = st.sampled_from([0.25, 0.5, 0.75])
    scores = torch.tensor(draw(st.lists(st.one_of(tied, st.floats(0, 1)), min_size=n, max_size=n)),
                          dtype=torch.float64)
    threshold = draw(st.one_of(st.sampled_from(THRESHOLDS), st.floats(0, 1)))
    if n >= 2 and draw(st.booleans()):
        iou = exact_iou(rows[draw(st.integers(0, n - 1))], rows[draw(st.integers(0, n - 1))])
        threshold = float(iou) if iou is not None and 0 < iou <= 1 else threshold
    idxs = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=torch.long)
    return boxes, scores, threshold, idxs


@PROPERTY
@given(nms_inputs())
def test_property_nms_matches_torchvision(inputs):
    """Catches any disagreement of the reference, the public op and the C++ kernel with torchvision (nms) and with
    torchvision per category (batched_nms) on degenerate, inverted and far-out boxes, tied scores and thresholds that
    equal an IoU exactly: e.g. a reference suppressing at IoU >= threshold, or bugs (a) and (c) of issue 26 (float32
    threshold comparison, tie order); with the extension built, the fixed-input tests before issue 26 caught none."""
    boxes64, scores64, threshold, idxs = inputs
    for dtype in (torch.float32, torch.float64):
        boxes, scores = boxes64.to(dtype), scores64.to(dtype)
        expected = tv_ops.nms(boxes, scores, threshold)
        assert torch.equal(reference.nms(boxes, scores, threshold), expected), dtype
        assert torch.equal(nms(boxes, scores, threshold), expected), dtype
        by_class = tv_per_class_nms(boxes, scores, idxs, threshold)
        assert torch.equal(reference.batched_nms(boxes, scores, idxs, threshold), by_class), dtype
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), by_class), dtype
        if _extension.has_C():
            assert torch.equal(kernel_nms(boxes, scores, threshold), expected), dtype
