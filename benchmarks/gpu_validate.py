"""The measuring steps of benchmarks/gpu_run.sh, each a subcommand that writes JSON (and runs on a CPU at toy sizes).

    python benchmarks/gpu_validate.py model   --json OUT/model.json   # s/img: OPMask, baseline, torchvision, fp32/bf16
    python benchmarks/gpu_validate.py prior   --json OUT/prior.json   # object_prior_add vs unfused vs memory floor
    python benchmarks/gpu_validate.py weights --out r50.pth --images DIR   # a ResNet-50 file for the training run
    python benchmarks/gpu_validate.py summary --out OUT               # the table gpu_run.sh prints last

Timing: warm-up first, then the median of interleaved rounds (model) or triton.testing.do_bench's median (prior), with the
device synchronised around every measured call. "fp32" runs PyTorch's defaults (cuDNN may use TF32 for convolutions;
matmuls stay fp32); "bf16" runs the model under torch.autocast(bfloat16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATASHEET_TBS = {"H100": 3.35, "H200": 4.8}  # HBM bandwidth, TB/s (performance.md)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy, bytes read + written per second (the achievable memory ceiling), in TB/s."""
    import torch

    n = (1 << 28) if device.startswith("cuda") else (1 << 24)  # 1 GiB of fp32 on a GPU
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[2:]) / 1e12


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


# ----------------------------------------------------------------------------------------------------------- model
def _make_model(provider: str, case, weights: str | None):
    """bench_model's providers, with every backbone loaded from ``weights`` (a torchvision ResNet-50 file) if given:
    random weights with identity BN statistics blow activations up, and the RPN then keeps a handful of proposals."""
    import bench_model as bm
    import torch

    from opmask_fast.config import get_preset, with_torchvision_weights
    from opmask_fast.modeling import build_model

    torch.manual_seed(0)
    if provider == "torchvision":
        model = bm._torchvision(case)
        if weights:
            missing, _ = model.backbone.body.load_state_dict(torch.load(weights, weights_only=True), strict=False)
            assert not missing, missing
        return model.to(bm.DEVICE).eval()
    _, _, _, post, pre, _, k = case
    cfg = get_preset(f"{provider}_r50_coco")
    cfg.num_classes = k
    cfg.rpn.pre_nms_topk_test, cfg.rpn.post_nms_topk_test = pre, post
    cfg.roi_heads.score_thresh = 0.0  # 100 detections per image, so the mask head and the paste run in full
    if weights:
        cfg = with_torchvision_weights(cfg, weights)
    return build_model(cfg).to(bm.DEVICE).eval()


def cmd_model(args) -> dict:
    import bench_model as bm
    import torch

    bm.DEVICE = args.device
    h, w = (int(v) for v in args.size.split("x"))
    case = ("r50", "r50_coco", (h, w), args.proposals, args.proposals, 512, 80)
    img, _ = bm.make_inputs(case)
    results = {}
    for dtype in args.dtypes.split(","):
        models = {p: _make_model(p, case, args.weights) for p in ("opmask", "baseline", "torchvision")}

        def call(p):
            inp = [img / 255.0] if p == "torchvision" else [img]  # torchvision takes 0..1 images
            with torch.no_grad(), torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16,
                                                 enabled=dtype == "bf16"):
                out = models[p](inp)
            _sync(args.device)
            return out

        samples = {p: [] for p in models}
        for p in models:
            for _ in range(args.warmup):
                call(p)
        detections = {p: int(call(p)[0]["boxes"].shape[0]) for p in models}
        for _ in range(args.rounds):  # interleaved: a slow moment hits every provider alike
            for p in models:
                t0 = time.perf_counter()
                call(p)
                samples[p].append(time.perf_counter() - t0)
        for p, v in samples.items():
            results[f"{p} {dtype}"] = {"s_per_img": statistics.median(v), "min": min(v), "detections": detections[p]}
            print(f"{p:12s} {dtype:5s} {h}x{w}: {statistics.median(v):.4f} s/img (min {min(v):.4f}, "
                  f"{detections[p]} detections)", flush=True)
        models.clear()  # free the weights before the next dtype's models
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"device": device_name(args.device), "size": [h, w], "proposals": args.proposals, "rounds": args.rounds,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "results": results}


# ----------------------------------------------------------------------------------------------------------- prior
def cmd_prior(args) -> dict:
    import bench_object_prior_add as bp
    import torch

    bp.DEVICE, bp.CUDA = args.device, args.device.startswith("cuda")
    bw = copy_bandwidth(args.device)
    name = device_name(args.device)
    sheet = next((v for k, v in DATASHEET_TBS.items() if k in name), None)
    providers = ["unfused", "reference", "triton" if bp.CUDA else "op"]
    print(f"device {name}: copy bandwidth {bw * 1e3:.0f} GB/s measured" + (f", {sheet} TB/s datasheet" if sheet else ""))
    rows = []
    for R in (int(r) for r in args.sizes.split(",")):
        for dtype in args.dtypes.split(","):
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
            for mode in ("fwd", "fwd+bwd"):
                nbytes = bp.floor_bytes(R, dt, mode)
                row = {"R": R, "dtype": dtype, "mode": mode, "floor_bytes": nbytes,
                       "floor_ms_measured_bw": nbytes / (bw * 1e12) * 1e3,
                       "floor_ms_datasheet": nbytes / (sheet * 1e12) * 1e3 if sheet else None}
                for p in providers:
                    inputs, grad_out = bp.make_inputs(R, dt, mode == "fwd+bwd")
                    row[p] = bp.time_ms(bp.make_step(bp.PROVIDERS[p], inputs, grad_out, mode), args.reps)
                fused = row[providers[-1]]
                row["speedup_vs_unfused"] = row["unfused"] / fused
                row["x_floor"] = fused / row["floor_ms_measured_bw"]
                rows.append(row)
                print(f"R={R:5d} {dtype} {mode:8s} " + " ".join(f"{p} {row[p]:.3f} ms" for p in providers)
                      + f" | floor {row['floor_ms_measured_bw']:.3f} ms ({nbytes / 1e6:.0f} MB); "
                      f"{providers[-1]} = {row['x_floor']:.1f}x floor, {row['speedup_vs_unfused']:.2f}x unfused",
                      flush=True)
    return {"device": name, "copy_TBps": bw, "datasheet_TBps": sheet, "fused_provider": providers[-1], "rows": rows}


# --------------------------------------------------------------------------------------------------------- weights
def cmd_weights(args) -> None:
    """A torchvision ResNet-50 state dict with random weights whose BatchNorm statistics are measured on real images,
    so that the frozen BN of the preset normalises activations as ImageNet statistics would (random weights with
    identity statistics make activations grow through the 16 blocks and the first iterations diverge)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).to(args.device)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    def images():
        if not args.images:  # no data at hand: uniform noise images
            g = torch.Generator().manual_seed(0)
            return [torch.rand(args.side, args.side, 3, generator=g).numpy() * 255 for _ in range(args.count)]
        files = sorted(f for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        out = []
        for f in files[:args.count]:
            with Image.open(os.path.join(args.images, f)) as im:
                out.append(np.asarray(im.convert("RGB").resize((args.side, args.side)), dtype=np.float32))
        return out

    mean = torch.tensor([123.675, 116.28, 103.53], device=args.device).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], device=args.device).view(3, 1, 1)
    net.train()
    arrays = images()
    with torch.no_grad():
        for arr in arrays:
            net(((torch.from_numpy(arr).float().to(args.device).permute(2, 0, 1) - mean) / std)[None])
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, args.out)
    print(f"wrote {args.out}: random ResNet-50, BN statistics from {len(arrays)} images of {args.images or 'noise'}")


# --------------------------------------------------------------------------------------------------------- summary
def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_summary(args) -> None:
    lines = ["| stage | status | seconds |", "|---|---|---|"]
    stages = os.path.join(args.out, "stages.tsv")
    if os.path.exists(stages):
        for row in open(stages):
            lines.append("| " + " | ".join(row.rstrip("\n").split("\t")) + " |")
    model = _load(os.path.join(args.out, "model.json"))
    if model:
        h, w = model["size"]
        lines += ["", f"s/img, {model['device']}, {h}x{w}, batch 1, {model['proposals']} proposals "
                      f"(median of {model['rounds']})", "", "| dtype | OPMask | baseline | torchvision | OPMask/baseline |",
                  "|---|---|---|---|---|"]
        r = model["results"]
        for dt in sorted({k.split()[1] for k in r}):
            o, b, t = (r[f"{p} {dt}"]["s_per_img"] for p in ("opmask", "baseline", "torchvision"))
            lines.append(f"| {dt} | {o:.4f} | {b:.4f} | {t:.4f} | {o / b:.2f} |")
    prior = _load(os.path.join(args.out, "prior.json"))
    if prior:
        p = prior["fused_provider"]
        lines += ["", f"object_prior_add, {prior['device']}, copy {prior['copy_TBps'] * 1e3:.0f} GB/s; ms (floor = minimum "
                      f"bytes / measured copy bandwidth)", "", f"| case | unfused | {p} | floor | {p} / floor | speed-up |",
                  "|---|---|---|---|---|---|"]
        for row in prior["rows"]:
            lines.append(f"| R={row['R']} {row['dtype']} {row['mode']} | {row['unfused']:.3f} | {row[p]:.3f} | "
                         f"{row['floor_ms_measured_bw']:.3f} | {row['x_floor']:.1f}x | {row['speedup_vs_unfused']:.2f}x |")
    static = _load(os.path.join(args.out, "static.json"))
    if static:
        import gpu_static

        lines += gpu_static.summary_lines(static)
    step = _load(os.path.join(args.out, "train_step.json"))
    if step:
        import gpu_train_step

        lines += gpu_train_step.summary_lines(step)
    path = _load(os.path.join(args.out, "prior_path.json"))
    if path:
        lines += ["", "the model's prior path (benchmarks/bench_prior_path.py): host ms (median, with a sync) and the "
                      "kernels' ms (profiler), their floor bytes per second over the datasheet HBM bandwidth", "",
                  "| case | provider | host ms | kernel ms | floor fraction | costliest kernels (ms) |",
                  "|---|---|---|---|---|---|"]
        for b in sorted(path["benchmarks"], key=lambda b: (b["group"], b["params"]["provider"])):
            extra = b.get("extra_info", {})
            kernel = f"{extra['kernel_ms']:.3f}" if "kernel_ms" in extra else "-"
            sheet = next((v for k, v in DATASHEET_TBS.items() if k in extra.get("device", "")), None)
            floor = f"{extra['floor_GBps'] / (sheet * 1e3):.2f}" if sheet and "floor_GBps" in extra else "-"
            top = ", ".join(f"{name} {ms:.3f}" for name, ms in extra.get("top_kernels", [])) or "-"
            lines.append(f"| {b['group']} | {b['params']['provider']} | {b['stats']['median'] * 1e3:.3f} | {kernel} | "
                         f"{floor} | {top} |")
    train = _load(os.path.join(args.out, "train_metrics.json"))
    log = os.path.join(args.out, "train_metrics.jsonl")
    if os.path.exists(log):
        # the log ends with the evaluation's record; the last training record carries the step time
        last = [r for r in (json.loads(l) for l in open(log) if l.strip()) if "seconds_per_iter" in r][-1]
        lines += ["", f"training: {last['iteration']} iterations, {last['seconds_per_iter']:.3f} s/iter, "
                      f"last loss {last['loss']:.3f}"]
    if train:
        lines.append(f"evaluation: {train['num_images']} images, {train['seconds_per_image']:.4f} s/img, "
                     f"box AP {train['bbox_AP']}, mask AP {train['mask_AP']}, train {train['train_seconds']:.0f} s")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--size", default="800x1333", help="HxW of the image (no resizing happens)")
    m.add_argument("--proposals", type=int, default=1000, help="pre- and post-NMS proposals (detectron2: 1000)")
    m.add_argument("--dtypes", default="fp32,bf16")
    m.add_argument("--rounds", type=int, default=20)
    m.add_argument("--warmup", type=int, default=3)
    m.add_argument("--weights", default=None, help="torchvision ResNet-50 state dict for every backbone (see weights)")
    p = sub.add_parser("prior")
    p.add_argument("--sizes", default="100,512,1024", help="RoI counts R")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=5, help="timed repeats where do_bench is unavailable (the CPU)")
    wgt = sub.add_parser("weights")
    wgt.add_argument("--out", required=True)
    wgt.add_argument("--images", default=None, help="folder of images for the BN statistics (default: noise)")
    wgt.add_argument("--count", type=int, default=16)
    wgt.add_argument("--side", type=int, default=512)
    s = sub.add_parser("summary")
    s.add_argument("--out", required=True)
    for sp in (m, p, wgt):
        sp.add_argument("--device", default="auto", help="cuda when a GPU is visible, else cpu")
    for sp in (m, p):
        sp.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if getattr(args, "device", None) == "auto":  # torch only for the measuring commands: summary runs without it
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    warnings.filterwarnings("ignore")
    result = {"model": cmd_model, "prior": cmd_prior, "weights": cmd_weights, "summary": cmd_summary}[args.cmd](args)
    if result is not None and args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
