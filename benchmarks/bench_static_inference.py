"""Per-image inference of the dynamic path (`OPMaskModel`, filters and lists of data-dependent length) against the
static-shape path (`StaticInference`: padded, fixed-size NMS, no host sync), same weights, same images, on the CPU
(and CUDA when present). Both stop at the 28x28 mask probabilities (no paste), so the two do the same work.

    python -m pytest benchmarks/bench_static_inference.py --benchmark-only
    OPMASK_FAST_BENCH_CHECKPOINT=outputs/compare/<variant>_s0/checkpoint.pth python -m pytest ...   # trained weights
    python benchmarks/bench_static_inference.py [ROUNDS] [--all-slots]   # the CPU case interleaved, process time

The CPU cases run the validation images of the embedded set (generated into the cache on first use) through the lite
model: with a trained checkpoint (the environment variable; `compare` writes one per variant) its detections are a
trained model's, otherwise the weights are random (score threshold 0.05: random weights spread their scores over the
classes, so about 100 detections reach the mask head per image). Providers: dynamic, static; one call = all images,
the table gives each one's median and the ratio to the dynamic path (one run). Run as a script, the first CPU case's
two paths alternate round by round in one process (one thread, process time), so a load that comes and goes weighs on
both alike; `--all-slots` runs the static path's mask branch on all M detection slots, as it does traced or on a GPU.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch

from opmask_fast.config import get_preset
from opmask_fast.data import SyntheticSpec, ensure_synthetic, val_dataset
from opmask_fast.modeling import build_model
from opmask_fast.modeling.meta_arch import StaticInference
from opmask_fast.training.checkpoint import model_from_checkpoint

CUDA = torch.cuda.is_available()
CHECKPOINT = os.environ.get("OPMASK_FAST_BENCH_CHECKPOINT")
NUM_IMAGES = 20  # embedded-set validation images per call
# (case, preset): with a checkpoint, the one case is its model.
CASES = [("lite_embedded", "opmask_r18_lite")] if CHECKPOINT else \
    [("lite_embedded", "opmask_r18_lite"), ("lite_paper_embedded", "opmask_r18_lite_paper")]
if CUDA:
    CASES.append(("r50_800x1344", "opmask_r50_coco"))


def _model(preset: str, device: str):
    if CHECKPOINT and "r18" in preset:
        model, _ = model_from_checkpoint(CHECKPOINT)
        return model.to(device).eval()
    cfg = get_preset(preset)
    cfg.num_classes = 6 if "r18" in preset else 80
    cfg.roi_heads.score_thresh = 0.05
    cfg.backbone.weights = None
    if cfg.backbone.norm == "FrozenBN":
        cfg.backbone.norm = "BN"
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval()


def _images(model, name: str, device: str) -> list[torch.Tensor]:
    if "r50" in name:
        return [(torch.rand(1, 3, 800, 1344, generator=torch.Generator().manual_seed(0)) * 255).to(device)]
    ds = val_dataset(ensure_synthetic(SyntheticSpec()), model.cfg.input, "circle,triangle,cross")
    return [ds[i][0][None].float().to(device) for i in range(NUM_IMAGES)]


def _dynamic(model, image):
    features, sizes = model.extract([image[0]])
    proposals, _ = model.rpn(features, sizes)
    return model.roi_heads.forward_test(features, proposals, sizes)


@pytest.mark.parametrize("provider", ["dynamic", "static"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_inference(benchmark, case, provider):
    name, preset = case
    device = "cuda" if CUDA and "r50" in name else "cpu"
    model = _model(preset, device)
    images = _images(model, name, device)
    static = StaticInference(model)
    run = (lambda x: static(x)) if provider == "static" else (lambda x: _dynamic(model, x))  # noqa: E731

    def call():
        with torch.no_grad():
            out = [run(x) for x in images]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # warm-up: first-call initialisation is not the steady state
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = f"inference {name} ({device}, {len(images)} images per call)"
        benchmark.pedantic(call, rounds=8 if device == "cpu" else 15, iterations=1)
    finally:
        torch.set_num_threads(threads)


def main(rounds: int = 6, all_slots: bool = False) -> None:
    name, preset = CASES[0]
    model = _model(preset, "cpu")
    images = _images(model, name, "cpu")
    static = StaticInference(model)
    if all_slots:  # the mask branch on every slot, as traced or on a GPU
        static._mask_slots = lambda count, slots: slots
    runs = {"dynamic": lambda x: _dynamic(model, x), "static": static}
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0 warms up
            for provider, run in runs.items():
                start = time.process_time()
                for x in images:
                    run(x)
                if r:
                    times[provider].append((time.process_time() - start) / len(images) * 1e3)
    dyn, sta = (statistics.median(times[k]) for k in runs)
    print(f"{name}{' (all slots)' if all_slots else ''}: {len(images)} images, {rounds} interleaved rounds, one "
          f"thread, process time: dynamic {dyn:.1f} ms/img, static {sta:.1f} ms/img, static / dynamic {sta / dyn:.2f}")


if __name__ == "__main__":
    main(int(next((a for a in sys.argv[1:] if a.isdigit()), 6)), all_slots="--all-slots" in sys.argv)
