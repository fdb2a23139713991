"""GPU check of the static-shape inference path (gpu_run.sh's "static path" stage; runs on a CPU at toy sizes with
--device cpu).

1. Host synchronisations: `StaticInference` under `torch.cuda.set_sync_debug_mode("error")` from the uploaded
   image to the padded outputs; the first sync raises and its Python stack is printed (what still waits for the host).
2. s/img of the dynamic path (`OPMaskModel.detect` without the paste), the static path and, when capture works, the
   static path replayed as one CUDA graph; fp32 and bf16 autocast; batch 1 and 8; R-50 preset at 800x1344, score
   threshold 0.05, with the candidates and kept detections per image printed so the load is known.

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


def _model(args):
    cfg = get_preset("opmask_r50_coco")
    if args.weights:
        cfg = with_torchvision_weights(cfg, args.weights)
    else:
        cfg.backbone.norm = "BN"  # random weights: plain BN statistics instead of identity FrozenBN
    cfg.roi_heads.score_thresh = 0.05
    cfg.rpn.pre_nms_topk_test = cfg.rpn.post_nms_topk_test = args.proposals
    torch.manual_seed(0)
    return build_model(cfg).to(args.device).eval()


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="800x1344")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--proposals", type=int, default=1000, help="pre- and post-NMS proposals (detectron2: 1000)")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    model = _model(args)
    static = StaticInference(model)
    dev = args.device
    result = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "size": [h, w], "rows": []}
    image = torch.rand(1, 3, h, w, device=dev, generator=torch.Generator(dev).manual_seed(0)) * 255
    with torch.no_grad():
        out = static(image)
        print(f"detections kept: {out['count'].tolist()} of {out['boxes'].shape[1]}")
        if dev == "cuda":
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
            for batch in (int(b) for b in args.batches.split(",")):
                x = image.expand(batch, -1, -1, -1).contiguous()
                ctx = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bf16")  # noqa: E731

                def dynamic():
                    with ctx():
                        feats, sizes = model.extract(list(x.unbind(0)))
                        props, _ = model.rpn(feats, sizes)
                        return model.roi_heads.forward_test(feats, props, sizes)

                def run_static():
                    with ctx():
                        return static(x)

                row = {"dtype": dtype, "batch": batch,
                       "dynamic_s_per_img": _time(dynamic, args.rounds, dev) / batch,
                       "static_s_per_img": _time(run_static, args.rounds, dev) / batch}
                if dev == "cuda":
                    try:
                        graph, buf = torch.cuda.CUDAGraph(), x.clone()
                        run_static()  # warm-up on the side stream is done by the first calls above
                        with torch.cuda.graph(graph):
                            with ctx():
                                static(buf)
                        row["graph_s_per_img"] = _time(graph.replay, args.rounds, dev) / batch
                    except Exception as e:  # noqa: BLE001 - capture fails while a sync remains: say why
                        row["graph_s_per_img"] = None
                        row["graph_error"] = str(e).splitlines()[0][:300]
                result["rows"].append(row)
                print(row, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
