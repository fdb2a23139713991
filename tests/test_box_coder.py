"""Box coder, IoU, matcher and sampler: parity with torchvision on random boxes, and the detectron2 conventions."""

import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.ops import box_iou

from opmask_fast.modeling.box_coder import BoxCoder
from opmask_fast.modeling.box_ops import clip_boxes, pairwise_iou
from opmask_fast.modeling.matcher import Matcher
from opmask_fast.modeling.sampler import subsample_labels


def _boxes(n, g, scale=500.0):
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_match_torchvision():
    g = torch.Generator().manual_seed(0)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        ours, tv = BoxCoder(weights=weights), TVBoxCoder(weights)
        ref, tgt = _boxes(300, g), _boxes(300, g)
        d = ours.encode(tgt, ref)
        torch.testing.assert_close(d, tv.encode_single(tgt, ref), rtol=1e-5, atol=1e-5)
        deltas = torch.randn(300, 4, generator=g)
        torch.testing.assert_close(ours.decode(deltas, ref), tv.decode_single(deltas, ref), rtol=1e-5, atol=1e-3)
        # decode(encode(x)) == x while the size ratio stays under the clamp (1000 / 16)
        wh = (ref[:, 2:] - ref[:, :2]).repeat(1, 2)
        near = ref + torch.rand(300, 4, generator=g).sub(0.5) * wh * torch.tensor([0.4, 0.4, -0.4, -0.4])
        torch.testing.assert_close(ours.decode(ours.encode(near, ref), ref), near, rtol=1e-5, atol=1e-3)


def test_decode_class_specific_and_clamped():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.zeros(1, 12)
    deltas[0, 4:8] = torch.tensor([10.0, 0.0, 0.0, 0.0])  # class 1: shift by one box width
    deltas[0, 10:12] = 1e4  # class 2: huge growth is clamped, not inf
    out = coder.decode(deltas, ref).view(1, 3, 4)
    torch.testing.assert_close(out[0, 0], ref[0])
    torch.testing.assert_close(out[0, 1], torch.tensor([10.0, 0.0, 20.0, 10.0]))
    assert torch.isfinite(out).all() and out[0, 2, 2] - out[0, 2, 0] <= 10 * 1000 / 16 + 1e-3


def test_decode_half_input_computes_in_float32():
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[1000.0, 1000.0, 1100.0, 1050.0]])
    out = coder.decode(torch.zeros(1, 4, dtype=torch.float16), ref.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_pairwise_iou_matches_torchvision_and_clip():
    g = torch.Generator().manual_seed(1)
    a, b = _boxes(50, g), _boxes(70, g)
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(a, b))
    empty = torch.tensor([[5.0, 5.0, 5.0, 9.0]])
    assert pairwise_iou(empty, empty).item() == 0.0
    clipped = clip_boxes(torch.tensor([[-5.0, 3.0, 120.0, 90.0]]), 80, 100)
    assert clipped.tolist() == [[0.0, 3.0, 100.0, 80.0]]


def test_matcher_thresholds_and_low_quality():
    m = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    q = torch.tensor([[0.1, 0.5, 0.8, 0.0], [0.2, 0.25, 0.0, 0.0]])
    matches, labels = m(q)
    assert matches.tolist() == [1, 0, 0, 0]
    # 0.2 background; 0.5 would be ignored but is GT 1's best (0.25) -> fg, still matched to GT 0 as detectron2 does;
    # 0.8 fg; IoU 0 never becomes fg
    assert labels.tolist() == [0, 1, 1, 0]
    matches, labels = m(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0]


def test_subsample_labels_fraction_and_bg():
    torch.manual_seed(0)
    labels = torch.tensor([5] * 100 + [1] * 10 + [-1] * 20 + [3] * 5)  # bg label 5
    pos, neg = subsample_labels(labels, 64, 0.25, 5)
    assert pos.numel() == 15 and neg.numel() == 49
    assert (labels[pos] != 5).all() and (labels[pos] != -1).all() and (labels[neg] == 5).all()
    assert len(set(pos.tolist()) | set(neg.tolist())) == 64
