"""RoIAlign forward and forward+backward on FPN-sized inputs: opmask_fast vs torchvision vs the reference."""

from __future__ import annotations

import pytest
import torch

from opmask_fast.ops import reference, roi_align

tv_ops = pytest.importorskip("torchvision.ops")

# P2 of an 800x1088 image (stride 4), 1000 boxes of 8..208 px, detectron2's aligned RoIAlign with 2x2 samples.
SHAPE = (2, 256, 200, 272)
NUM_BOXES = 1000
SCALE = 0.25


def make_inputs(device: str, dtype=torch.float32):
    x = torch.randn(*SHAPE, device=device, dtype=dtype)
    img_h, img_w = SHAPE[2] / SCALE, SHAPE[3] / SCALE
    xy = torch.rand(NUM_BOXES, 2) * torch.tensor([img_w - 210, img_h - 210])
    wh = torch.rand(NUM_BOXES, 2) * 200 + 8
    rois = torch.cat([torch.randint(0, SHAPE[0], (NUM_BOXES, 1)).float(), xy, xy + wh], dim=1).to(device)
    return x, rois


def provider_fn(provider: str):
    if provider == "opmask_fast":
        return lambda x, r, s: roi_align(x, r, s, SCALE, 2, True)
    if provider == "torchvision":
        return lambda x, r, s: tv_ops.roi_align(x, r, s, SCALE, 2, True)
    return lambda x, r, s: reference.roi_align(x, r, (s, s), SCALE, 2, True)


@pytest.mark.parametrize("size", [7, 14])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("provider", ["opmask_fast", "torchvision", "reference"])
def test_roi_align(benchmark, sync, provider, mode, size, device):
    if provider == "reference" and device == "cuda" and size == 14:
        pytest.skip("the reference is a CPU fallback; one CUDA case is enough to place it")
    benchmark.group = f"roi_align {mode} {size}x{size} {device}"
    x, rois = make_inputs(device)
    fn = provider_fn(provider)
    if mode == "forward":

        def run():
            with torch.no_grad():
                fn(x, rois, size)
            sync(device)

    else:
        x.requires_grad_()
        grad = torch.randn(NUM_BOXES, SHAPE[1], size, size, device=device)

        def run():
            x.grad = None
            fn(x, rois, size).backward(grad)
            sync(device)

    rounds = 3 if device == "cpu" else 20
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
