"""What the prior costs a training step (gpu_run.sh's "prior's share of a training step" stage; runs on a CPU at toy
sizes with --device cpu).

The R-50 preset at 800x1344, 2 images per step, 512 RoIs sampled per image, bf16 autocast (or fp32), one SGD step per
call; providers with the same weights and inputs, timed interleaved (CUDA events around each step on a GPU, wall time
on a CPU), median of --rounds:

- baseline_boxproj: the Mask R-CNN baseline with the box projection term (the headline without its prior);
- headline: the feature-std prior at the mask head's resolution (the CAM of a 16-wide prior head of its own over each
  mask RoI's 14x14 features, trained by the mask-supervised RoIs) added to the pooled features by `add_weighted_map`
  + the box projection term (the recommended recipe);
- prior_7x7: the same with the box head's own 7x7 map as the prior;
- baseline / paper: the plain baseline and the paper's recipe (prior added as is).

The prior's share is (with - without) / with for each pair (headline, prior_7x7 against baseline_boxproj; paper
against baseline); beside it the prior's own Triton kernels from the profiler (the weighted add or RoIAlign replaces
the plain one and the CAM pass runs cuDNN convs, so the share of step time is the number that counts).

    python benchmarks/gpu_train_step.py --json OUT/train_step.json [--weights r50.pth] [--device cpu --size 128x192]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from opmask_fast.config import get_preset, with_torchvision_weights
from opmask_fast.modeling import build_model
from opmask_fast.variants import apply_variant

# provider -> the study variant (opmask_fast.variants) applied to the R-50 preset
PROVIDERS = {"baseline_boxproj": "baseline_boxproj", "headline": "opmask_std_boxproj_maskres_separate16_suponly",
             "prior_7x7": "opmask_std_boxproj", "baseline": "baseline", "paper": "opmask"}
PAIRS = [("headline", "baseline_boxproj"), ("prior_7x7", "baseline_boxproj"), ("paper", "baseline")]


def _model(args, name: str):
    cfg = apply_variant(get_preset("opmask_r50_coco"), PROVIDERS[name])
    if args.weights:
        cfg = with_torchvision_weights(cfg, args.weights)
    else:
        cfg.backbone.norm = "BN"
    cfg.rpn.pre_nms_topk_train = cfg.rpn.post_nms_topk_train = args.proposals
    cfg.validate()
    torch.manual_seed(0)
    return build_model(cfg).to(args.device).train()


def _inputs(args):
    """bench_model's image and targets (three boxes, one of them box-only, so the box term runs), batch times."""
    import bench_model as bm

    bm.DEVICE = args.device
    h, w = (int(v) for v in args.size.split("x"))
    img, target = bm.make_inputs(("r50", "r50_coco", (h, w), args.proposals, args.proposals, 512, 80))
    return [img] * args.batch, [target] * args.batch


def _step(model, images, targets, dtype: str, device: str):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    return step


def _timed(step, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _prior_kernels_ms(step, device: str) -> float | None:
    """GPU ms of the prior's own kernels in one step (profiler)."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    names = ("object_prior", "box_grad_rows")  # the Triton kernels of kernels/object_prior_add_jit.py
    return sum(getattr(e, "device_time_total", 0.0) for e in prof.key_averages()
               if any(n in e.key for n in names)) / 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="800x1344")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--proposals", type=int, default=1000, help="pre- and post-NMS proposals in training")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    images, targets = _inputs(args)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "size": args.size,
              "batch": args.batch, "rounds": args.rounds, "rows": [], "errors": {}}
    for dtype in args.dtypes.split(","):
        steps = {}
        for name in PROVIDERS:
            try:  # a provider that fails is reported, and the others are still timed
                step = _step(_model(args, name), images, targets, dtype, args.device)
                step()
                step()  # warm-up: autotuning, caches
                steps[name] = step
            except Exception as e:  # noqa: BLE001
                result["errors"][f"{name} {dtype}"] = str(e).splitlines()[0][:300]
                print(f"{name} {dtype}: FAILED {result['errors'][f'{name} {dtype}']}", flush=True)
        samples = {name: [] for name in steps}
        for _ in range(args.rounds):  # interleaved: a slow moment hits every provider alike
            for name, step in steps.items():
                samples[name].append(_timed(step, args.device))
        med = {name: statistics.median(v) for name, v in samples.items()}
        for with_prior, without in [p for p in PAIRS if p[0] in med and p[1] in med]:
            row = {"dtype": dtype, "recipe": with_prior, "step_s": med[with_prior], "without_prior_s": med[without],
                   "share": (med[with_prior] - med[without]) / med[with_prior],
                   "prior_kernels_ms": _prior_kernels_ms(steps[with_prior], args.device)}
            result["rows"].append(row)
            print(row, flush=True)
        del steps
    for line in summary_lines(result):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if result["errors"]:
        raise SystemExit(f"{len(result['errors'])} provider(s) failed: {', '.join(result['errors'])}")


def summary_lines(result: dict) -> list[str]:
    lines = ["", f"the prior's share of an R-50 training step, {result['device']}, {result['size']}, batch "
                 f"{result['batch']} (median of {result['rounds']}, interleaved)", "",
             "| dtype | recipe | step s | without the prior s | share | prior kernels ms |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        kern = "-" if r["prior_kernels_ms"] is None else f"{r['prior_kernels_ms']:.3f}"
        lines.append(f"| {r['dtype']} | {r['recipe']} | {r['step_s']:.4f} | {r['without_prior_s']:.4f} | "
                     f"{r['share'] * 100:.1f}% | {kern} |")
    lines += [f"FAILED {k}: {v}" for k, v in result.get("errors", {}).items()]
    return lines


if __name__ == "__main__":
    main()
