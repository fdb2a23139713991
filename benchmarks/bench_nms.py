"""NMS at 1k / 5k / 20k boxes and batched_nms with 80 classes: opmask_fast vs torchvision vs the reference."""

from __future__ import annotations

import pytest
import torch

from opmask_fast.ops import batched_nms, nms, reference

tv_ops = pytest.importorskip("torchvision.ops")


def make_boxes(n: int, device: str):
    """Proposal-like boxes over an 800x1088 image: many overlaps, as RPN outputs."""
    xy = torch.rand(n, 2) * torch.tensor([1000.0, 700.0])
    wh = torch.rand(n, 2) * 150 + 10
    return torch.cat([xy, xy + wh], dim=1).to(device), torch.rand(n).to(device)


NMS = {"opmask_fast": nms, "torchvision": tv_ops.nms, "reference": reference.nms}
BATCHED = {"opmask_fast": batched_nms, "torchvision": tv_ops.batched_nms, "reference": reference.batched_nms}


@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("provider", ["opmask_fast", "torchvision", "reference"])
def test_nms(benchmark, sync, provider, n, device):
    if provider == "reference" and n > 5000:
        pytest.skip("the Python-loop reference is only timed up to 5k boxes")
    benchmark.group = f"nms {n // 1000}k iou0.7 {device}"
    boxes, scores = make_boxes(n, device)
    fn = NMS[provider]

    def run():
        fn(boxes, scores, 0.7)
        sync(device)

    benchmark.pedantic(run, rounds=5 if n >= 20000 else 10, warmup_rounds=1)


@pytest.mark.parametrize("n", [5000, 20000])
@pytest.mark.parametrize("provider", ["opmask_fast", "torchvision", "reference"])
def test_batched_nms(benchmark, sync, provider, n, device):
    if provider == "reference" and n > 5000:
        pytest.skip("the Python-loop reference is only timed up to 5k boxes")
    benchmark.group = f"batched_nms {n // 1000}k 80cls iou0.5 {device}"
    boxes, scores = make_boxes(n, device)
    idxs = torch.randint(0, 80, (n,), device=device)
    fn = BATCHED[provider]

    def run():
        fn(boxes, scores, idxs, 0.5)
        sync(device)

    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
