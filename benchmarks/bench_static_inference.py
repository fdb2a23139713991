"""Per-image inference of the dynamic path (`OPMaskModel`, filters and lists of data-dependent length) against the
static-shape path (`StaticInference`: padded, fixed-size NMS, no host sync), same weights, same image, on the CPU
(and CUDA when present). Both stop at the 28x28 mask probabilities (no paste), so the two do the same work.

    python -m pytest benchmarks/bench_static_inference.py --benchmark-only

Providers: dynamic, static; the table at the end gives each one's median and its ratio to the dynamic path (one run).
"""

from __future__ import annotations

import pytest
import torch

from opmask_fast.config import get_preset
from opmask_fast.modeling import build_model
from opmask_fast.modeling.meta_arch import StaticInference

CUDA = torch.cuda.is_available()
# (case, preset, image size, score threshold): the lite main-job model on an embedded-set-sized image; the threshold
# 0.05 of a trained model (random weights spread their scores over the classes: hundreds of candidates reach NMS).
CASES = [("lite_128", "opmask_r18_lite", (128, 128), 0.05), ("lite_paper_128", "opmask_r18_lite_paper", (128, 128), 0.05)]
if CUDA:
    CASES.append(("r50_800x1344", "opmask_r50_coco", (800, 1344), 0.05))


def _model(preset: str, thresh: float, device: str):
    cfg = get_preset(preset)
    cfg.num_classes = 6 if "r18" in preset else 80
    cfg.roi_heads.score_thresh = thresh
    cfg.backbone.weights = None
    if cfg.backbone.norm == "FrozenBN":
        cfg.backbone.norm = "BN"
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval()


def _dynamic(model, image):
    features, sizes = model.extract([image[0]])
    proposals, _ = model.rpn(features, sizes)
    return model.roi_heads.forward_test(features, proposals, sizes)


@pytest.mark.parametrize("provider", ["dynamic", "static"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_inference(benchmark, case, provider):
    name, preset, (h, w), thresh = case
    device = "cuda" if CUDA and "r50" in name else "cpu"
    model = _model(preset, thresh, device)
    image = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255).to(device)
    static = StaticInference(model)
    run = (lambda: static(image)) if provider == "static" else (lambda: _dynamic(model, image))

    def call():
        with torch.no_grad():
            out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # warm-up: first-call initialisation is not the steady state
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = f"inference {name} ({device})"
        benchmark.pedantic(call, rounds=15, iterations=1)
    finally:
        torch.set_num_threads(threads)
