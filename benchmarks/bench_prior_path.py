"""The model's own prior path, timed as the model runs it: the mask pooler (RoIAlign on P2) with the object prior,
for the paper's recipe (prior added as is), the 7x7 feature-std recipe (prior x std(RoI features) / std(prior)) and
the headline's (`feature_std_maskres`: the prior at the mask head's resolution, weighted the same way).

Providers per (recipe, R, dtype, mode) group:
- fused: the model's path: `object_prior(size=14x14)` (at inference the returned 7x7 prior resized) then RoIAlign
  adding the map as it writes its output; for feature_std RoIAlign also reads each RoI's weight off its own output
  (`map_weight="feature_std"`): one pass over the mask features;
- general: RoIAlign, then `object_prior`, then `PriorWeight` (a per-RoI std pass and an add pass over the features);
- unfused: plain PyTorch/torchvision (all-class CAM convolution, gather, min-max, interpolate, std, add).
At inference (R = 100, rows index 1000 proposals) every provider also computes the 7x7 prior the model returns.
Training (R = 512, 1024) gathers `rows` of 2R box-feature rows, as the model's mask RoIs do.
The headline's prior is the CAM of the box convs run on the pooled features themselves, so it exists only after the
pooling; that CAM pass (the same convs, without gradient, in every provider) is left out and a [0, 1] map stands in
for its result. Its providers: fused: RoIAlign, then `add_weighted_map` (the weight read off each RoI, the map added,
one pass over the pooled features); general: RoIAlign, then `PriorWeight`; unfused: torchvision's RoIAlign, then the
std weight and the add in PyTorch.

GPU: D = 256 mask channels, C = 1024 box channels, K = 81, P2 of two 800x1088 images. CPU: the main job's lite model
(D = C = 64, K = 6, P2 of two 256x256 images). Columns: median ms per call (pytest-benchmark: host wall time with a
synchronisation), on CUDA also the kernels' own time per call from the profiler and the bandwidth that time gives for
the floor's bytes (what any implementation moves: the output written, the box-feature rows read; the backward adds
the output gradient read, the box-feature and feature-map gradients written); `gpu_validate.py summary` divides it
by the card's datasheet HBM bandwidth.

    python -m pytest benchmarks/bench_prior_path.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from opmask_fast.ops import PriorWeight, add_weighted_map, object_prior, roi_align

tv_ops = pytest.importorskip("torchvision.ops")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# (D, C, K, feature map (N, H, W), image scale of P2); the CPU case is the main job's model.
DIMS = (256, 1024, 81, (2, 200, 272)) if CUDA else (64, 64, 6, (2, 64, 64))
HM, HB, SCALE = 14, 7, 0.25


def make_case(R: int, dtype: torch.dtype, grad: bool, seed: int = 0):
    d, c, k, (n, h, w) = DIMS
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    kw = dict(generator=g, device=DEVICE)
    feat = torch.randn(n, d, h, w, **kw).to(dtype).requires_grad_(grad)
    rows_n = 1000 if R == 100 else 2 * R
    box = torch.randn(rows_n, c, HB, HB, **kw).relu().to(dtype).requires_grad_(grad)
    cls_w = (torch.randn(k + 1, c, **kw) * 0.05).to(dtype)  # detached, as in the model
    img_h, img_w = h / SCALE, w / SCALE
    xy = torch.rand(R, 2, **kw) * torch.tensor([img_w * 0.8, img_h * 0.8], device=DEVICE)
    wh = 16 + torch.rand(R, 2, **kw) * torch.tensor([img_w * 0.2, img_h * 0.2], device=DEVICE)
    rois = torch.cat([torch.randint(0, n, (R, 1), **kw).float(), xy, xy + wh], 1)
    classes = torch.randint(0, k, (R,), **kw)
    rows = torch.randperm(rows_n, **kw)[:R]
    grad_out = torch.randn(R, d, HM, HM, **kw).to(dtype)
    prior_mask_res = torch.rand(R, HM, HM, **kw).to(dtype)  # the mask-resolution prior (detached, as the headline's)
    return (feat, rois, box, cls_w, classes, rows, prior_mask_res), grad_out


def fused(recipe):
    if recipe == "feature_std_maskres":
        return _mask_res(lambda feats, prior: add_weighted_map(feats, prior, "feature_std"))
    weight = PriorWeight(scale=recipe)

    def run(feat, rois, box, cls_w, classes, rows, _prior_mask_res):
        if torch.is_grad_enabled():
            prior = object_prior(box, cls_w, classes, rows, size=(HM, HM), validate=False)
        else:  # inference, as the model: the returned 7x7 prior and the 14x14 map from one launch
            prior, _ = object_prior(box, cls_w, classes, rows, size=(HM, HM), with_unresized=True, validate=False)
        return roi_align(feat, rois, HM, SCALE, 0, True, roi_map=prior, map_weight=weight.map_weight)
    run.computes_prior = True
    return run


def general(recipe):
    if recipe == "feature_std_maskres":
        return _mask_res(PriorWeight(scale="feature_std"))
    weight = PriorWeight(scale=recipe)

    def run(feat, rois, box, cls_w, classes, rows, _prior_mask_res):
        feats = roi_align(feat, rois, HM, SCALE, 0, True)
        return weight(feats, object_prior(box, cls_w, classes, rows, size=(HM, HM), validate=False))
    return run


def _std_weighted(feats, prior):
    gain = feats.detach().float().flatten(1).std(1) / prior.detach().float().flatten(1).std(1).clamp(min=1e-6)
    return prior * torch.nan_to_num(gain, nan=0.0, posinf=0.0).to(prior.dtype)[:, None, None, None]


def _mask_res(add):
    """The headline's path after its CAM pass: the plain pooling, then `add(features, prior)`."""
    def run(feat, rois, box, cls_w, classes, rows, prior_mask_res):
        return add(roi_align(feat, rois, HM, SCALE, 0, True), prior_mask_res)
    run.computes_prior = True  # the returned prior is the map itself: nothing else to compute
    return run


def unfused(recipe):
    if recipe == "feature_std_maskres":
        def run_mask_res(feat, rois, box, cls_w, classes, rows, prior_mask_res):
            feats = tv_ops.roi_align(feat.float(), rois.float(), HM, SCALE, 0, True).to(feat.dtype)
            return feats + _std_weighted(feats, prior_mask_res[:, None])
        return run_mask_res

    def run(feat, rois, box, cls_w, classes, rows, _prior_mask_res, eps=1e-6):
        # torchvision's CUDA roi_align has no bfloat16 kernel: pooled in float32, as a user of it would
        feats = tv_ops.roi_align(feat.float(), rois.float(), HM, SCALE, 0, True).to(feat.dtype)
        cams = F.conv2d(box[rows], cls_w[:, :, None, None])                      # every class's CAM
        cam = cams[torch.arange(len(classes), device=box.device), classes]
        lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
        cam = torch.where(hi - lo >= eps, (cam - lo) / (hi - lo).clamp_min(eps), torch.zeros_like(cam))
        prior = F.interpolate(cam[:, None], size=(HM, HM), mode="bilinear", align_corners=False)
        if recipe == "feature_std":
            prior = _std_weighted(feats, prior)
        return feats + prior
    return run


PROVIDERS = {"fused": fused, "general": general, "unfused": unfused}


def make_step(fn, args, grad_out, mode):
    if mode == "fwd":
        feat, rois, box, cls_w, classes, rows, _ = args

        def step():
            with torch.no_grad():
                if not getattr(fn, "computes_prior", False):
                    object_prior(box, cls_w, classes, rows, validate=False)  # the 7x7 prior the model returns
                return fn(*args)
        return step
    leaves = [args[0], args[2]]

    def step():  # autograd.grad: no .grad accumulation inside the timed step (the headline's reads no box features)
        return torch.autograd.grad(fn(*args), leaves, grad_out, allow_unused=True)
    return step


def floor_bytes(R: int, dtype: torch.dtype, mode: str, recipe: str) -> int:
    d, c, _, (n, h, w) = DIMS
    size = torch.empty(0, dtype=dtype).element_size()
    # the headline reads its ready prior map (R x 14 x 14), no box features
    out, box = R * d * HM * HM, R * HM * HM if recipe == "feature_std_maskres" else R * c * HB * HB
    return size * (out + box + (out + box + n * d * h * w if mode == "fwd+bwd" else 0))


def kernel_ms(step, reps: int = 20) -> tuple[float, list[tuple[str, float]]]:
    """The GPU kernels' own time per call (profiler), without the host's launch gaps, and the four costliest kernels
    (short name, ms per call): which of RoIAlign's pooling, the map's add or the prior the time goes to."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total_us = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:4]
    return total_us / reps / 1e3, [(short_kernel_name(e.key), e.self_device_time_total / reps / 1e3) for e in top]


def short_kernel_name(name: str) -> str:
    """A kernel's name without namespaces, template arguments and parameters:
    `void opmask_fast::add_weighted_map_kernel<float, float>(...)` -> `add_weighted_map_kernel`; a name that is no
    C++ signature (a Triton kernel, a memcpy) as it is."""
    if "::" not in name and "<" not in name:
        return name.split("(")[0].strip()[:40]
    name = name.split("(")[0]
    depth, base = 0, ""
    for ch in name:  # drop <...> template arguments, nested ones included
        depth += ch == "<"
        if depth == 0:
            base += ch
        depth -= ch == ">"
    return base.split()[-1].split("::")[-1] if base.split() else name[:40]


RECIPES = ("none", "feature_std", "feature_std_maskres")
CASES = [(p, recipe, R, dt, mode) for recipe in RECIPES for R in (100, 512, 1024)
         for dt in ((torch.float32, torch.bfloat16) if CUDA else (torch.float32,))
         for mode in (("fwd",) if R == 100 else ("fwd", "fwd+bwd")) for p in PROVIDERS]


@pytest.mark.parametrize("provider,recipe,R,dtype,mode", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_prior_path(benchmark, provider, recipe, R, dtype, mode):
    args, grad_out = make_case(R, dtype, mode == "fwd+bwd")
    step = make_step(PROVIDERS[provider](recipe), args, grad_out, mode)
    benchmark.group = f"prior path {recipe} R={R} {str(dtype)[6:]} {mode} {DEVICE}"

    def timed():
        step()
        if CUDA:
            torch.cuda.synchronize()
    timed()
    benchmark.pedantic(timed, rounds=20 if CUDA else 10, iterations=1, warmup_rounds=1)
    if CUDA:
        ms, top = kernel_ms(step)
        benchmark.extra_info["kernel_ms"] = ms
        benchmark.extra_info["top_kernels"] = top
        benchmark.extra_info["floor_GBps"] = floor_bytes(R, dtype, mode, recipe) / (ms * 1e-3) / 1e9
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
