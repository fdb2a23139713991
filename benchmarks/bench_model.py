"""Per-image latency of the whole model: OPMask vs its Mask R-CNN baseline vs torchvision's maskrcnn_resnet50_fpn.

Every provider sees the same image size, the same proposal counts (pre-NMS top-k per level, post-NMS top-k per image)
and the same detections per image; the score threshold is 0 so randomly initialised models still return 100 detections
and the mask head and the paste run as they do in a trained model. Training is one step: forward, backward, SGD.
Torchvision's model is built with weights=None, weights_backbone=None (it then uses plain BatchNorm; three trainable
ResNet stages as in our preset).

CPU: R-50 at a reduced size with few proposals (OPMask's 4-conv box head dominates otherwise), and the tiny preset on
synthetic-sized images, where the prior's share is largest. CUDA (when present): R-50 at 800x1333, 1000 proposals.

    python -m pytest benchmarks/bench_model.py --benchmark-only [--benchmark-json out.json]
    python benchmarks/bench_model.py            # the same cases timed by hand, with the ratios printed
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import pytest
import torch

from opmask_fast.config import get_preset

from opmask_fast.modeling import build_model

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# (name, preset suffix, image (h, w), post-NMS proposals, pre-NMS per level, RoIs sampled per training image, classes)
CASES = ([("r50", "r50_coco", (800, 1344), 1000, 1000, 512, 80)] if CUDA else
         [("r50", "r50_coco", (256, 384), 50, 1000, 512, 80), ("tiny", "r18_tiny", (128, 128), 300, 500, 64, 6)])
PROVIDERS = ["opmask", "baseline", "torchvision"]


def _ours(kind: str, case):
    _, preset, _, post, pre, rois, k = case
    cfg = get_preset(f"{kind}_{preset}")
    cfg.num_classes = k
    cfg.rpn.pre_nms_topk_test = cfg.rpn.pre_nms_topk_train = pre
    cfg.rpn.post_nms_topk_test = cfg.rpn.post_nms_topk_train = post
    cfg.roi_heads.batch_size_per_image = rois
    cfg.roi_heads.score_thresh = 0.0
    return build_model(cfg)


def _torchvision(case):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    _, _, (h, w), post, pre, rois, k = case
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=k + 1, trainable_backbone_layers=3,
                                 min_size=min(h, w), max_size=max(h, w), rpn_pre_nms_top_n_test=pre,
                                 rpn_post_nms_top_n_test=post, rpn_pre_nms_top_n_train=pre,
                                 rpn_post_nms_top_n_train=post, box_batch_size_per_image=rois, box_score_thresh=0.0,
                                 box_detections_per_img=100)


def make(provider: str, case):
    torch.manual_seed(0)
    model = _torchvision(case) if provider == "torchvision" else _ours(provider, case)
    return model.to(DEVICE)


def make_inputs(case):
    _, _, (h, w), _, _, _, k = case
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, h, w, generator=g) * 255
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.2, 0.5, 0.45, 0.95]]) * torch.tensor([w, h, w, h])
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2]) % k, "masks": masks,
              "has_mask": torch.tensor([True, False, True])}
    return img.to(DEVICE), {key: v.to(DEVICE) for key, v in target.items()}


def runner(provider: str, mode: str, case):
    model = make(provider, case)
    img, target = make_inputs(case)
    tv = provider == "torchvision"
    if mode == "infer":
        model.eval()
        inp = [img / 255.0] if tv else [img]  # torchvision takes 0..1 images

        def run():
            with torch.no_grad():
                model(inp)
            if CUDA:
                torch.cuda.synchronize()
    else:
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        if tv:
            tgt = {"boxes": target["boxes"], "labels": target["labels"] + 1, "masks": target["masks"]}
            inp = [img / 255.0]
        else:
            tgt, inp = target, [img]

        def run():
            losses = model(inp, [tgt])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            if CUDA:
                torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_model_latency(benchmark, provider, mode, case):
    if provider == "torchvision" and case[0] != "r50":
        pytest.skip("torchvision's model is only compared at R-50")
    warnings.filterwarnings("ignore")
    (h, w) = case[2]
    benchmark.group = f"model {mode} {case[0]} {h}x{w} {case[3]} proposals {DEVICE}"
    benchmark.pedantic(runner(provider, mode, case), rounds=3 if not CUDA else 10, warmup_rounds=1)


def main() -> None:
    warnings.filterwarnings("ignore")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"device {DEVICE}, torch threads {torch.get_num_threads()}, median of {rounds} rounds, s/img")
    for case in CASES:
        for mode in ("infer", "train"):
            providers = [p for p in PROVIDERS if p != "torchvision" or case[0] == "r50"]
            runs = {p: runner(p, mode, case) for p in providers}
            samples = {p: [] for p in providers}
            for p in providers:
                runs[p]()  # warm-up
            for _ in range(rounds):  # interleaved, so a burst of load on a shared machine hits every provider alike
                for p in providers:
                    t0 = time.perf_counter()
                    runs[p]()
                    samples[p].append(time.perf_counter() - t0)
            times = {p: statistics.median(v) for p, v in samples.items()}
            line = "  ".join(f"{p} {t:.3f}" for p, t in times.items())
            ratios = f"opmask/baseline {times['opmask'] / times['baseline']:.3f}"
            if "torchvision" in times:
                ratios += f"  baseline/torchvision {times['baseline'] / times['torchvision']:.3f}"
            print(f"{case[0]:5s} {mode:5s} {case[2][0]}x{case[2][1]} {case[3]} proposals: {line}  |  {ratios}")


if __name__ == "__main__":
    main()
