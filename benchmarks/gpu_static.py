"""GPU check of the static-shape inference path (gpu_run.sh's "static path" stage; runs on a CPU at toy sizes with
--device cpu).

1. Load: the box classifier's logits are scaled (weight and bias by one factor, found by bisection) so that about
   --candidates (proposal, class) pairs per image pass the score threshold 0.05, as a trained model's scores spread;
   with random weights they sit near 1/81 and almost nothing would reach NMS and the mask head. Printed per stage:
   anchors, RPN candidates (per-level top-k), proposals kept, class candidates, detections kept. The CAM is min-max
   normalised, so the scale leaves the prior as it is.
2. Host synchronisations: `StaticInference` under `torch.cuda.set_sync_debug_mode("error")` from the uploaded
   image to the padded outputs; the first sync raises and its Python stack is printed (what still waits for the host).
3. s/img of the dynamic path (`roi_heads.forward_test`, no paste), the static path and the static path replayed as one
   CUDA graph, for OPMask and its baseline (same weights, same load); fp32 and bf16 autocast; batch 1 and 8; R-50
   preset at 800x1344.
4. Per-stage table (bf16, batch 1): each stage of the static path captured as its own CUDA graph and replayed, GPU time
   from CUDA events (median), beside the stage's eager host time (wall, synchronised): where the time goes.

    python benchmarks/gpu_static.py --json OUT/static.json [--weights r50.pth] [--device cpu --size 128x128 --batches 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

import torch

from opmask_fast.config import get_preset, with_torchvision_weights
from opmask_fast.modeling import build_model
from opmask_fast.modeling.meta_arch import StaticInference
from opmask_fast.ops import object_prior

THRESH = 0.05


def _model(args, preset: str):
    cfg = get_preset(preset)
    if args.weights:
        cfg = with_torchvision_weights(cfg, args.weights)
    else:
        cfg.backbone.norm = "BN"  # random weights: plain BN statistics instead of identity FrozenBN
    cfg.roi_heads.score_thresh = THRESH
    cfg.rpn.pre_nms_topk_test = cfg.rpn.post_nms_topk_test = args.proposals
    torch.manual_seed(0)
    return build_model(cfg).to(args.device).eval()


def _intermediates(static: StaticInference, x: torch.Tensor) -> dict:
    """Every stage's inputs and outputs for images `x`, by running the stages one after another."""
    b, _, h, w = x.shape
    s = {"x": x, "b": b, "h": h, "w": w}
    s["features"] = static.model.backbone(static.normalize(x))
    s["proposals"], s["valid"] = static.proposals(s["features"], b, h, w)
    s["box_feats"], s["logits"], s["deltas"] = static.box_forward(s["features"], s["proposals"])
    s["dets"] = static.detections(s["logits"], s["deltas"], s["proposals"], s["valid"], h, w)
    s["out"] = static.mask_forward(s["features"], s["box_feats"], s["dets"], s["proposals"].shape[1])
    return s


def _candidates(logits: torch.Tensor, k: int, b: int, scale: float = 1.0) -> float:
    """Mean (proposal, class) pairs per image whose softmax score passes THRESH."""
    return float((torch.softmax(logits.float() * scale, dim=1)[:, :k] > THRESH).sum()) / b


def spread_scores(models: list, static: StaticInference, x: torch.Tensor, target: float) -> float:
    """Scale every model's box classifier (weight and bias) so that about `target` candidates per image pass the
    threshold; returns the factor. The count rises with the factor and then falls back towards one class per proposal
    (the softmax peaks), so the smallest factor that reaches the target is found on a grid, then refined between its
    grid neighbours; where none reaches it, the one with the most candidates."""
    k, b = static.cfg.num_classes, x.shape[0]
    with torch.no_grad():
        logits = _intermediates(static, x)["logits"]
        grid = [i / 4 for i in range(49)]  # log2 of the factor, 0..12
        counts = [_candidates(logits, k, b, 2.0 ** g) for g in grid]
        first = next((i for i, c in enumerate(counts) if c >= target), None)
        if first is None or first == 0:
            log2 = grid[max(range(len(grid)), key=counts.__getitem__)] if first is None else 0.0
        else:
            lo, hi = grid[first - 1], grid[first]
            for _ in range(16):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _candidates(logits, k, b, 2.0 ** mid) < target else (lo, mid)
            log2 = hi
        factor = 2.0 ** log2
        for m in models:
            m.roi_heads.box_head.cls_score.weight.mul_(factor)
            m.roi_heads.box_head.cls_score.bias.mul_(factor)
    return factor


def load(static: StaticInference, x: torch.Tensor) -> dict:
    """Candidates and kept boxes per stage, per image (means over the batch)."""
    with torch.no_grad():
        s = _intermediates(static, x)
    b, k = s["b"], static.cfg.num_classes
    anchors = sum(f.shape[-2] * f.shape[-1] for f in s["features"]) * static.model.rpn.anchor_generator.num_anchors
    rpn_topk = sum(min(static.model.rpn.cfg.pre_nms_topk_test, f.shape[-2] * f.shape[-1] *
                       static.model.rpn.anchor_generator.num_anchors) for f in s["features"])
    return {"anchors": anchors, "rpn_candidates": rpn_topk, "proposals_kept": float(s["valid"].sum()) / b,
            "class_candidates": _candidates(s["logits"], k, b), "detections_kept": float(s["dets"]["count"].float().mean())}


def _time(fn, rounds: int, device: str) -> float:
    fn()
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _graph(fn):
    """`fn` captured as a CUDA graph (after two warm-up calls on a side stream, as capture requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _gpu_ms(graph, rounds: int) -> float:
    """Median GPU time of a graph replay from CUDA events."""
    graph.replay()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def stage_table(static: StaticInference, x: torch.Tensor, ctx, rounds: int, device: str) -> list[dict]:
    """Each stage of the static path alone: GPU ms of its CUDA graph (on a GPU) and eager host ms."""
    heads = static.model.roi_heads
    with torch.no_grad(), ctx():
        s = _intermediates(static, x)
    dets, p = s["dets"], s["proposals"].shape[1]
    cls_w = heads.box_head.cls_score.weight
    rows = (dets["keep"].clamp(min=0) // static.cfg.num_classes).reshape(-1)
    size = (heads.rc.mask_pooler_resolution,) * 2
    stages = [
        ("normalize + backbone + FPN", lambda: static.model.backbone(static.normalize(s["x"]))),
        ("RPN: head, per-level top-k, NMS", lambda: static.proposals(s["features"], s["b"], s["h"], s["w"])),
        ("box head: RoIAlign + convs + FC", lambda: static.box_forward(s["features"], s["proposals"])),
        ("detections: decode, per-class NMS", lambda: static.detections(s["logits"], s["deltas"], s["proposals"],
                                                                       s["valid"], s["h"], s["w"])),
        ("mask head: RoIAlign + prior + convs", lambda: static.mask_forward(s["features"], s["box_feats"], dets, p)),
        ("  of which the prior (7x7 and its 14x14 map)", lambda: object_prior(
            s["box_feats"], cls_w, dets["labels"].reshape(-1), rows, size=size, with_unresized=True, validate=False)),
        ("paste (28x28 -> image, bool)", lambda: static.paste_masks(s["out"], s["h"], s["w"])),
    ]
    if heads.prior_resolution == "mask" or not heads.use_prior:
        stages = [st for st in stages if "of which" not in st[0]]
    table = []
    for name, fn in stages:
        def run(fn=fn):
            with torch.no_grad(), ctx():
                return fn()
        row = {"stage": name, "host_ms": _time(run, rounds, device) * 1e3}
        if device == "cuda":
            try:
                row["gpu_ms"] = _gpu_ms(_graph(run), rounds)
            except Exception as e:  # noqa: BLE001 - one stage that cannot be captured must not lose the others
                row["graph_error"] = str(e).splitlines()[0][:300]
        table.append(row)
        print(row, flush=True)
    return table


def summary_lines(result: dict) -> list[str]:
    """The stage's tables for gpu_validate.py's summary."""
    h, w = result["size"]
    lines = ["", f"static path, {result['device']}, {h}x{w}: host syncs: {result.get('host_syncs', '-')}; load per "
                 f"image: {json.dumps(result.get('load', {}))}", "",
             "| model | dtype | batch | dynamic s/img | static s/img | graph s/img |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {fmt(r['dynamic_s_per_img'])} | "
                     f"{fmt(r['static_s_per_img'])} | {fmt(r.get('graph_s_per_img'))} |")
    for model, table in result.get("stages", {}).items():
        lines += ["", f"{model}, stages of the static path ({result.get('stage_config', '')}): GPU ms of each stage's "
                      f"CUDA graph, eager host ms", "", "| stage | GPU ms | host ms |", "|---|---|---|"]
        for r in table:
            gpu = f"{r['gpu_ms']:.3f}" if "gpu_ms" in r else ("capture failed" if "graph_error" in r else "-")
            lines.append(f"| {r['stage']} | {gpu} | {r['host_ms']:.3f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="800x1344")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--proposals", type=int, default=1000, help="pre- and post-NMS proposals (detectron2: 1000)")
    p.add_argument("--candidates", type=float, default=1000, help="class candidates per image over the threshold")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    dev = args.device
    models = {"OPMask": _model(args, "opmask_r50_coco"), "baseline": _model(args, "baseline_r50_coco")}
    statics = {name: StaticInference(m) for name, m in models.items()}
    image = torch.rand(1, 3, h, w, device=dev, generator=torch.Generator(dev).manual_seed(0)) * 255
    factor = spread_scores(list(models.values()), statics["OPMask"], image, args.candidates)
    result = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "size": [h, w], "rows": [],
              "score_threshold": THRESH, "logit_scale": factor, "stages": {}, "stage_config": "bf16, batch 1"}
    result["load"] = load(statics["OPMask"], image)
    print(f"classifier logits x {factor:.1f}; load per image: {result['load']}; baseline's: "
          f"{load(statics['baseline'], image)}", flush=True)
    static = statics["OPMask"]
    if dev == "cuda":
        with torch.no_grad():
            static(image)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                static(image)
                result["host_syncs"] = "none"
            except RuntimeError:
                result["host_syncs"] = traceback.format_exc(limit=-8)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        print("host synchronisations in the static path:", result["host_syncs"])
    for dtype in ("fp32", "bf16"):
        ctx = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bf16")  # noqa: E731
        for batch in (int(b) for b in args.batches.split(",")):
            x = image.expand(batch, -1, -1, -1).contiguous()
            for name, model in models.items():
                def dynamic(model=model):
                    with torch.no_grad(), ctx():
                        feats, sizes = model.extract(list(x.unbind(0)))
                        props, _ = model.rpn(feats, sizes)
                        return model.roi_heads.forward_test(feats, props, sizes)

                def run_static(static=statics[name], buf=x):
                    with torch.no_grad(), ctx():
                        return static(buf)

                row = {"model": name, "dtype": dtype, "batch": batch,
                       "dynamic_s_per_img": _time(dynamic, args.rounds, dev) / batch,
                       "static_s_per_img": _time(run_static, args.rounds, dev) / batch}
                if dev == "cuda":
                    try:
                        graph = _graph(run_static)
                        row["graph_s_per_img"] = _time(graph.replay, args.rounds, dev) / batch
                    except Exception as e:  # noqa: BLE001 - capture fails while a sync remains: say why
                        row["graph_s_per_img"] = None
                        row["graph_error"] = str(e).splitlines()[0][:300]
                result["rows"].append(row)
                print(row, flush=True)
    _write(args.json, result)  # the rows so far, should the stage table fail
    bf16 = lambda: torch.autocast(dev, dtype=torch.bfloat16)  # noqa: E731
    for name in models:
        result["stages"][name] = stage_table(statics[name], image, bf16, args.rounds, dev)
    for line in summary_lines(result):
        print(line)
    _write(args.json, result)


def _write(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
