"""Benchmarks of opmask_fast::object_prior_add (the object mask prior), forward and forward+backward.

Providers:
- unfused: the paper's PyTorch path: a 1x1 convolution computing all K CAMs, gather the class slice, min-max,
  interpolate, add (about eight launches and a K-times larger intermediate);
- reference: opmask_fast's plain PyTorch reference (gather the class rows, batched dot product), autograd backward;
- op: the public op with backend="auto" (CPU: the reference forward with its explicit backward; CUDA: Triton);
- triton: backend="triton" (CUDA only).
And the fused-RoIAlign design: "roi_align then object_prior_add" against "object_prior(size=...) then
roi_align(roi_map=prior)", where RoIAlign adds the per-RoI map while writing its output.

Shapes: D = 256 (mask features 14x14), C = 1024 (box features 7x7), K = 81. R = 100 is inference (rows index 1000
proposals), R = 512 and 1024 are training (rows None). GB/s counts the bytes the op must move at least: forward reads
the mask and box features and writes the output; the backward adds reading grad_out and writing the box-feature grad.

    python benchmarks/bench_object_prior_add.py [--quick]   # prints a table (CPU: reference vs unfused)
    pytest benchmarks/bench_object_prior_add.py              # the same cases through pytest-benchmark
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from opmask_fast.ops import object_prior, object_prior_add
from opmask_fast.ops.reference import object_prior_add as ref

D, C, K, HB, HM = 256, 1024, 81, 7, 14
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def unfused(mf, bf, w, classes, rows, eps=1e-6):
    sel = bf[: len(classes)] if rows is None else bf[rows]
    cams = F.conv2d(sel, w[:, :, None, None])                                    # (R, K, Hb, Wb): every class
    cam = cams[torch.arange(len(classes), device=bf.device), classes]          # (R, Hb, Wb)
    lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
    cam = torch.where(hi - lo >= eps, (cam - lo) / (hi - lo).clamp_min(eps), torch.zeros_like(cam))
    return mf + F.interpolate(cam[:, None], size=mf.shape[-2:], mode="bilinear", align_corners=False)


PROVIDERS = {
    "unfused": unfused,
    "reference": lambda mf, bf, w, c, r: ref.object_prior_add(mf, bf, w, c, r),
    "op": lambda mf, bf, w, c, r: object_prior_add(mf, bf, w, c, r),
    "triton": lambda mf, bf, w, c, r: object_prior_add(mf, bf, w, c, r, backend="triton"),
}


def make_inputs(R: int, dtype: torch.dtype, grad: bool, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    N = 1000 if R == 100 else R
    mf = torch.randn(R, D, HM, HM, generator=g, device=DEVICE, dtype=dtype).requires_grad_(grad)
    bf = torch.randn(N, C, HB, HB, generator=g, device=DEVICE, dtype=dtype).relu().requires_grad_(grad)
    w = (torch.randn(K, C, generator=g, device=DEVICE) * 0.01).to(dtype)       # detached, as in OPMask
    classes = torch.randint(0, K, (R,), generator=g, device=DEVICE)
    rows = torch.randint(0, N, (R,), generator=g, device=DEVICE) if R == 100 else None
    grad_out = torch.randn(R, D, HM, HM, generator=g, device=DEVICE, dtype=dtype)
    return (mf, bf, w, classes, rows), grad_out


def floor_bytes(R: int, dtype: torch.dtype, mode: str) -> int:
    size = torch.empty(0, dtype=dtype).element_size()
    fwd = 2 * R * D * HM * HM + R * C * HB * HB
    return size * (fwd + (R * D * HM * HM + R * C * HB * HB if mode == "fwd+bwd" else 0))


def make_step(fn, args, grad_out, mode):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(*args)
    else:
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

        def step():  # autograd.grad, not backward: no .grad accumulation inside the timed step
            return torch.autograd.grad(fn(*args), leaves, grad_out)
    return step


def time_ms(step, reps: int) -> float:
    step()  # warm-up (and Triton compilation)
    if CUDA:
        try:
            import triton.testing
            return triton.testing.do_bench(step, warmup=10, rep=100, return_mode="median")
        except ImportError:
            pass
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        if CUDA:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fused_roi_align_case(R: int, grad: bool, seed: int = 0):
    """FPN level P2 of two 800x1088 images and R boxes of 32-256 px; mask RoIs take box rows in order."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    feat = torch.randn(2, D, 200, 272, generator=g, device=DEVICE).requires_grad_(grad)
    xy = torch.rand(R, 2, generator=g, device=DEVICE) * torch.tensor([800.0, 600.0], device=DEVICE)
    wh = 32 + torch.rand(R, 2, generator=g, device=DEVICE) * 224
    rois = torch.cat([torch.randint(0, 2, (R, 1), generator=g, device=DEVICE).float(), xy, xy + wh], 1)
    (_, bf, w, classes, rows), grad_out = make_inputs(R, torch.float32, grad, seed)
    return (feat, rois, bf, w, classes, rows), grad_out


def roi_align_then_add(feat, rois, bf, w, classes, rows):
    from opmask_fast.ops import roi_align
    return object_prior_add(roi_align(feat, rois, HM, 0.25, 2, True), bf, w, classes, rows)


def prior_into_roi_align(feat, rois, bf, w, classes, rows):
    from opmask_fast.ops import roi_align
    prior = object_prior(bf, w, classes, rows, size=(HM, HM))                    # (R, 14, 14), a few KB per RoI
    return roi_align(feat, rois, HM, 0.25, 2, True, roi_map=prior)


FUSED = {"roi_align+object_prior_add": roi_align_then_add, "object_prior+roi_align(roi_map)": prior_into_roi_align}

CASES = [(p, R, dt, mode) for R in (100, 512, 1024) for dt in (torch.float32, torch.bfloat16)
         for mode in ("fwd", "fwd+bwd") for p in PROVIDERS if CUDA or p != "triton"]


@pytest.mark.parametrize("provider,R,dtype,mode", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_object_prior_add(benchmark, provider, R, dtype, mode):
    args, grad_out = make_inputs(R, dtype, mode == "fwd+bwd")
    benchmark.group = f"object_prior_add R={R} {str(dtype)[6:]} {mode}"
    step = make_step(PROVIDERS[provider], args, grad_out, mode)
    step()
    benchmark(step)
    if benchmark.stats is not None:  # None under --benchmark-disable (one call, no timing)
        benchmark.extra_info["GB/s"] = floor_bytes(R, dtype, mode) / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("design", list(FUSED))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("R", [100, 512])
def test_fused_roi_align(benchmark, design, mode, R):
    args, grad_out = fused_roi_align_case(R, mode == "fwd+bwd")
    benchmark.group = f"roi_align with prior R={R} {mode}"
    benchmark(make_step(FUSED[design], args, grad_out, mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="R = 100 and 512, float32 only")
    parser.add_argument("--reps", type=int, default=5)
    opts = parser.parse_args()
    sizes = (100, 512) if opts.quick else (100, 512, 1024)
    dtypes = (torch.float32,) if opts.quick else (torch.float32, torch.bfloat16)
    print(f"device: {torch.cuda.get_device_name() if CUDA else 'cpu'}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")
    print(f"{'case':<34}{'provider':<34}{'ms':>10}{'GB/s':>9}{'speedup':>12}")  # vs the group's first provider
    for R in sizes:
        for dtype in dtypes:
            for mode in ("fwd", "fwd+bwd"):
                base = None
                for name, fn in PROVIDERS.items():
                    if name == "triton" and not CUDA:
                        continue
                    args, grad_out = make_inputs(R, dtype, mode == "fwd+bwd")
                    ms = time_ms(make_step(fn, args, grad_out, mode), opts.reps)
                    base = base or ms
                    gbs = floor_bytes(R, dtype, mode) / ms / 1e6
                    print(f"{f'R={R} {str(dtype)[6:]} {mode}':<34}{name:<34}{ms:>10.2f}{gbs:>9.1f}{base / ms:>11.2f}x")
    for R in (100, 512):
        for mode in ("fwd", "fwd+bwd"):
            base = None
            for name, fn in FUSED.items():
                args, grad_out = fused_roi_align_case(R, mode == "fwd+bwd")
                ms = time_ms(make_step(fn, args, grad_out, mode), max(3, opts.reps // 2))
                base = base or ms
                print(f"{f'RoIAlign+prior R={R} {mode}':<34}{name:<34}{ms:>10.2f}{'':>9}{base / ms:>11.2f}x")


if __name__ == "__main__":
    main()
