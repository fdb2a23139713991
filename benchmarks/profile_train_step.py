"""Where a CPU training step goes: torch.profiler over a few steps of one of bench_train_step's models, op time by kind.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_train_step.py [--provider lite_std_boxproj] [--steps 6]
        [--set roi_heads.box_head_conv_dims=64,64,64,64]

Builds the provider's model (``bench_train_step.PROVIDERS``), trains it on batches of the embedded synthetic dataset
(4 images of 128 px, generated into a temporary cache), warms up two steps, then profiles ``--steps`` steps on one
thread. Prints each kind's share of the profiled self CPU time (convolutions forward and backward, BatchNorm,
elementwise, RoIAlign, pooling, NMS, the optimizer, the rest), the costliest ops, and the data loader's CPU time per
batch. The kinds are matched on op names (``KINDS``); an op matching none counts as "other".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import BATCH, PROVIDERS, batch_stream, make_model, make_step  # noqa: E402

from opmask_fast.training.host_memory import keep_freed_memory  # noqa: E402

# kind -> substrings of op names (lower case), first match wins: backward before forward.
KINDS = {
    "convolution backward": ("convolution_backward", "mkldnn_convolution_backward"),
    "convolution forward": ("convolution", "conv2d", "mkldnn_convolution"),
    "BatchNorm": ("batch_norm", "native_batch_norm"),
    "RoIAlign (forward + backward)": ("roi_align", "multi_level_roi_align", "add_weighted_map"),
    "NMS": ("nms",),
    "max-pooling": ("max_pool",),
    "matrix products": ("addmm", "bmm", "matmul", "linear", "aten::mm"),
    "optimizer": ("_foreach", "sgd", "clamp_"),
    "elementwise": ("add", "mul", "sub", "div", "relu", "threshold", "sigmoid", "exp", "where", "copy_", "fill_",
                    "zero_"),
}


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS.items():
        if any(k in low for k in keys):
            return kind
    return "other"


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--provider", default="lite_std_boxproj", choices=list(PROVIDERS))
    p.add_argument("--steps", type=int, default=6, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--top", type=int, default=12, help="costliest ops listed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field on top of the provider's (repeatable)")
    args = p.parse_args(argv)
    keep_freed_memory()  # as train sets it on the CPU
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        it = batch_stream(cache)
        start = time.process_time()  # the loader's work alone: decoding, augmentation, rasterising the masks
        batches = [next(it) for _ in range(args.steps + 2)]
        load = (time.process_time() - start) / len(batches)
    step = make_step(make_model(args.provider, *args.set).train())
    for images, targets in batches[:2]:
        step(images, targets)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for images, targets in batches[2:]:
            step(images, targets)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        shares[kind_of(e.key)] = shares.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / total
    print(f"{args.provider}: {args.steps} steps of {BATCH} images, one thread, "
          f"{total / 1e3 / args.steps:.1f} ms of profiled CPU time per step")
    print("\n| kind | share |\n|---|---|")
    for kind, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {100 * share:.1f}% |")
    print("\ncostliest ops (self CPU ms per step):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"  {e.key:50s} {e.self_cpu_time_total / 1e3 / args.steps:8.2f}  ({kind_of(e.key)})")
    print(f"\ndata loading: {1e3 * load:.1f} ms of CPU per batch")
    return shares


if __name__ == "__main__":
    main()
