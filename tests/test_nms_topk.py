"""nms_topk, the fixed-size NMS of the static inference path: the same indices as batched_nms truncated, padded with
-1, invalid (-inf / NaN score) candidates ignored, on the compiled kernel and the reference; schema, fake kernel
and autograd registration checked by opcheck; traceable by torch.export with a fixed result shape."""

import numpy as np
import pytest
import torch

from opmask_fast import _extension
from opmask_fast.ops import batched_nms, nms, nms_topk, reference
from opmask_fast.ops.nms_topk import nms_topk_reference

needs_c = pytest.mark.skipif(not _extension.has_C(), reason="needs the compiled extension")


def _case(n, seed, classes=3, ties=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).floor() / 4  # many equal scores: the tie order matters
    idxs = torch.randint(0, classes, (n,), generator=g)
    return boxes, scores, idxs


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("n,max_keep,ties", [(0, 5, False), (1, 5, False), (37, 10, False), (200, 300, False),
                                             (150, 20, True), (64, 64, False), (65, 1, True)])
def test_equals_batched_nms_truncated_and_padded(impl, n, max_keep, ties):
    """Fails if the fixed-size result drifts from batched_nms (other order, other ties, a missing pad or count)."""
    if impl == "op" and not _extension.has_C():
        pytest.skip("needs the compiled extension")
    boxes, scores, idxs = _case(n, seed=n + max_keep, ties=ties)
    invalid = torch.rand(n, generator=torch.Generator().manual_seed(7)) < 0.3
    masked = scores.masked_fill(invalid, float("-inf"))
    if n > 2:
        masked[1] = float("nan")
    fn = nms_topk if impl == "op" else (lambda b, s, t, k, i: nms_topk_reference(b, s, i, t, k))
    for cls in (idxs, None):
        keep, count = fn(boxes, masked, 0.5, max_keep, cls)
        valid = torch.nonzero(masked > float("-inf")).squeeze(1)
        if cls is None:
            expected = valid[reference.nms(boxes[valid].double(), masked[valid].double(), 0.5)][:max_keep]
        else:
            expected = valid[reference.batched_nms(boxes[valid].double(), masked[valid].double(), cls[valid], 0.5)]
            expected = expected[:max_keep]
        assert keep.shape == (max_keep,) and keep.dtype == torch.int64 and count.shape == ()
        assert int(count) == expected.numel()
        assert torch.equal(keep[:int(count)], expected)
        assert (keep[int(count):] == -1).all()


@needs_c
def test_agrees_with_the_dynamic_ops_on_valid_candidates():
    boxes, scores, idxs = _case(300, seed=3)
    keep, count = nms_topk(boxes, scores, 0.6, 1000, idxs)
    assert torch.equal(keep[:int(count)], batched_nms(boxes, scores, idxs, 0.6))
    keep, count = nms_topk(boxes, scores, 0.6, 7)
    assert torch.equal(keep[:int(count)], nms(boxes, scores, 0.6)[:7])


@needs_c
def test_opcheck():
    boxes, scores, idxs = _case(40, seed=1)
    scores[::5] = float("-inf")
    for args in ((boxes, scores, idxs, 0.5, 10), (boxes, scores, None, 0.3, 60), (boxes[:0], scores[:0], None, 0.5, 4)):
        torch.library.opcheck(torch.ops.opmask_fast.nms_topk.default, args)


@needs_c
def test_exports_with_a_fixed_result_shape():
    class M(torch.nn.Module):
        def forward(self, boxes, scores, idxs):
            keep, count = nms_topk(boxes, scores, 0.5, 16, idxs, validate=False)
            return boxes[keep.clamp(min=0)], count

    boxes, scores, idxs = _case(50, seed=2)
    n = torch.export.Dim("n", min=2, max=4096)
    ep = torch.export.export(M(), (boxes, scores, idxs), dynamic_shapes=({0: n}, {0: n}, {0: n}))
    out, count = ep.module()(boxes, scores, idxs)
    ref_out, ref_count = M()(boxes, scores, idxs)
    assert out.shape == (16, 4) and torch.equal(out, ref_out) and int(count) == int(ref_count)


def test_meta_tensors_give_shapes():
    """The fixed-size result has a shape without data: meta tensors propagate it (the data check is skipped)."""
    boxes, scores = torch.zeros(5, 4, device="meta"), torch.zeros(5, device="meta")
    keep, count = nms_topk(boxes, scores, 0.5, 3, torch.zeros(5, dtype=torch.int64, device="meta"))
    assert keep.shape == (3,) and count.shape == () and keep.device.type == "meta"


def test_bad_arguments_are_refused():
    boxes, scores, idxs = _case(5, seed=0)
    with pytest.raises(ValueError, match="max_keep"):
        nms_topk(boxes, scores, 0.5, -1)
    with pytest.raises(TypeError, match="max_keep"):
        nms_topk(boxes, scores, 0.5, 2.0)
    assert torch.equal(nms_topk(boxes, scores, 0.5, np.int64(3))[0], nms_topk(boxes, scores, 0.5, 3)[0])
    # Shapes and dtypes are checked with or without the data check, naming the argument.
    for validate in (True, False):
        with pytest.raises(ValueError, match="scores must be a Tensor\\[5\\]"):
            nms_topk(boxes, scores[:4], 0.5, 3, validate=validate)
        with pytest.raises(ValueError, match="boxes must be a Tensor\\[N, 4\\]"):
            nms_topk(boxes[:, :3], scores, 0.5, 3, validate=validate)
        with pytest.raises(ValueError, match="idxs must be a Tensor\\[5\\]"):
            nms_topk(boxes, scores, 0.5, 3, idxs[:2], validate=validate)
        with pytest.raises(TypeError, match="idxs must be an integer"):
            nms_topk(boxes, scores, 0.5, 3, idxs.float(), validate=validate)
    bad = boxes.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        nms_topk(bad, scores, 0.5, 3)
    scores_masked = scores.clone()
    scores_masked[0] = float("-inf")  # the NaN box is an invalid candidate: allowed
    keep, count = nms_topk(bad, scores_masked, 0.5, 3)
    assert 0 not in keep[:int(count)].tolist()


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _extension.cuda_built()),
                                reason="needs a GPU and the CUDA kernels")


@needs_cuda
@pytest.mark.parametrize("n,classes,max_keep,ties", [(1, 1, 5, False), (700, 1, 50, False), (3000, 80, 100, True),
                                                     (5000, 3, 5000, False), (20000, 80, 100, False)])
def test_cuda_grouped_walk_equals_the_cpu_kernel(n, classes, max_keep, ties):
    """The CUDA per-category walk (one block per category, early stop at max_keep) against the CPU kernel: groups
    longer than a block's threads, one category, many, ties, -inf and NaN candidates. batched_nms on CUDA (the same
    walk, nothing masked) against the CPU kernel too."""
    boxes, scores, idxs = _case(n, seed=n, classes=classes, ties=ties)
    masked = scores.masked_fill(torch.rand(n, generator=torch.Generator().manual_seed(1)) < 0.2, float("-inf"))
    masked[::97] = float("nan")
    for cls in (idxs, None):
        keep, count = nms_topk(boxes.cuda(), masked.cuda(), 0.5, max_keep, None if cls is None else cls.cuda())
        exp_keep, exp_count = nms_topk(boxes, masked, 0.5, max_keep, cls)
        assert int(count) == int(exp_count)
        assert torch.equal(keep.cpu(), exp_keep)
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(),
                       batched_nms(boxes, scores, idxs, 0.5))
