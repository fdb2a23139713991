"""Tests of opmask_fast::object_prior_add: the float64 reference, the Triton kernels against it, validation.

Without CUDA the Triton kernels run under TRITON_INTERPRET=1 (set by conftest.py) on CPU tensors; cases are small
because interpreter launches are slow. fp16/bf16 run on CUDA only.
"""

import importlib
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from opmask_fast.ops import ObjectMaskPrior, object_prior
from opmask_fast.ops.object_prior_add import (_triton_kernels, object_prior_add,
                                             object_prior_add_)
from opmask_fast.ops.reference import object_prior_add as ref

# (opmask_fast.ops re-exports the function object_prior_add, which shadows the module's attribute name)
op_module = importlib.import_module("opmask_fast.ops.object_prior_add")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TRITON_OK = importlib.util.find_spec("triton") is not None and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="needs Triton with CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32] + ([torch.float16, torch.bfloat16] if CUDA else [])
# Largest error of the Triton kernels against the float64 reference, relative to max(1, max |reference|).
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
K = 81


def make_case(R=4, D=6, C=24, hb=7, wb=7, hm=14, wm=14, *, rows=False, seed=0, K=K):
    """float64 CPU inputs; with rows, RoIs share box-feature rows; classes repeat and include the last one."""
    g = torch.Generator().manual_seed(seed)
    N = 3 if rows else R + 1
    case = dict(mask_features=torch.randn(R, D, hm, wm, generator=g, dtype=torch.float64),
                box_features=torch.randn(N, C, hb, wb, generator=g, dtype=torch.float64),
                cls_weight=torch.randn(K, C, generator=g, dtype=torch.float64) * 0.3,
                classes=K - 1 - torch.randint(0, 3, (R,), generator=g),
                rows=torch.randint(0, N, (R,), generator=g) if rows else None)
    case["grad_out"] = torch.randn(R, D, hm, wm, generator=g, dtype=torch.float64)
    return case


def run(case, *, backend, dtype=None, device="cpu", scale=1.5, normalize=True, fn=object_prior_add):
    """Forward and every gradient (mask features, box features, classifier weight, tensor scale)."""
    dtype = dtype or (torch.float32 if backend == "triton" else torch.float64)
    leaves = [case[k].to(device, dtype).requires_grad_() for k in ("mask_features", "box_features", "cls_weight")]
    s = torch.tensor([scale], dtype=torch.float32 if dtype != torch.float64 else dtype, device=device,
                     requires_grad=True)
    idx = {k: None if case[k] is None else case[k].to(device) for k in ("classes", "rows")}
    kwargs = {} if fn is ref.object_prior_add else dict(backend=backend)
    out = fn(*leaves, idx["classes"], idx["rows"], normalize, s, **kwargs)
    grads = torch.autograd.grad(out, leaves + [s], case["grad_out"].to(device, dtype), allow_unused=True)
    return [out] + list(grads)


def oracle(case, **kw):
    return run(case, backend="reference", fn=ref.object_prior_add, **kw)


def device_for(backend: str) -> str:
    """Compiled Triton kernels take CUDA tensors only; the reference and the interpreter take CPU ones."""
    return DEVICE if backend == "triton" else "cpu"


def assert_close(actual, expected, dtype, what=""):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= TOL[dtype] * max(1.0, expected.abs().max().item() if expected.numel() else 0.0), (what, err)


def assert_all_close(results, expected, dtype):
    for name, a, e in zip(("out", "grad_mask", "grad_box", "grad_weight", "grad_scale"), results, expected):
        assert a is not None and torch.isfinite(a).all(), name
        assert_close(a, e, dtype, name)


# ---------------------------------------------------------------- reference (float64 oracle)

def test_reference_matches_unfused_definition():
    # The paper's definition: all K CAMs by a 1x1 convolution, gather the class slice, min-max, resize, add.
    c = make_case(rows=True)
    cams = F.conv2d(c["box_features"], c["cls_weight"][:, :, None, None])[c["rows"], c["classes"]]
    lo, hi = cams.amin((1, 2), keepdim=True), cams.amax((1, 2), keepdim=True)
    prior = F.interpolate(((cams - lo) / (hi - lo))[:, None], size=(14, 14), mode="bilinear", align_corners=False)
    expected = c["mask_features"] + 1.5 * prior
    got = ref.object_prior_add(c["mask_features"], c["box_features"], c["cls_weight"], c["classes"], c["rows"],
                               True, 1.5)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_gradcheck(rows, normalize):
    c = make_case(R=3, D=2, C=5, hb=4, wb=5, hm=7, wm=9, rows=rows, K=4)
    s = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    leaves = [c[k].requires_grad_() for k in ("mask_features", "box_features", "cls_weight")] + [s]
    for fn in (lambda m, b, w, s: object_prior_add(m, b, w, c["classes"], c["rows"], normalize, s, "reference"),
               lambda m, b, w, s: ref.object_prior_add(m, b, w, c["classes"], c["rows"], normalize, s)):
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
    assert torch.autograd.gradcheck(lambda b, w: object_prior(b, w, c["classes"], c["rows"], normalize,
                                                              backend="reference"), leaves[1:3], fast_mode=True)


def test_reference_explicit_backward_matches_autograd_with_ties():
    # ReLU'd box features with empty positions: the CAM's minimum (0) is tied at several pixels.
    c = make_case(rows=True)
    c["box_features"] = c["box_features"].relu()
    c["box_features"][:, :, 0, :3] = 0
    c["cls_weight"] = c["cls_weight"].abs()
    for a, e in zip(run(c, backend="reference")[1:], oracle(c)[1:]):
        torch.testing.assert_close(a, e)
    c = make_case()
    c["box_features"] = c["box_features"][:4]  # N == R without rows: each RoI owns its row
    for a, e in zip(run(c, backend="reference")[1:], oracle(c)[1:]):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_opcheck(backend):
    c = make_case(R=2, D=2, C=4, rows=True)
    dev = device_for(backend)
    args = (c["mask_features"].float().to(dev), c["box_features"].float().to(dev).requires_grad_(),
            c["cls_weight"].float().to(dev).requires_grad_(), c["classes"].to(dev), c["rows"].to(dev), True, 1.0,
            torch.ones(1, device=dev, requires_grad=True), backend)
    torch.library.opcheck(op_module._object_prior_add_op, args)
    torch.library.opcheck(op_module._object_prior_add_inplace_op, (args[0].clone(),) + args[1:],
                          test_utils=("test_schema", "test_faketensor"))
    # Channels-last features and a transposed classifier: the outputs and gradients are contiguous on every backend,
    # as the fake kernels say (a compiled graph would otherwise be planned with the wrong strides).
    odd = (args[0].contiguous(memory_format=torch.channels_last),
           args[1].detach().contiguous(memory_format=torch.channels_last).requires_grad_(),
           args[2].detach().t().contiguous().t().requires_grad_()) + args[3:]
    torch.library.opcheck(op_module._object_prior_add_op, odd)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in odd]  # the backward op has no backward
    out, cam = op_module._object_prior_add_op(*plain)
    bwd_args = (torch.randn_like(out), *plain[1:5], cam, *plain[5:], True, True, True)
    grads = op_module._object_prior_add_backward_op(*bwd_args)
    assert out.is_contiguous() and grads[0].is_contiguous() and grads[1].is_contiguous()
    torch.library.opcheck(op_module._object_prior_add_backward_op, bwd_args)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("rows", [False, True])
def test_triton_on_a_gpu_that_is_not_the_current_one(rows):
    """Triton launches on the current device, not the tensors': the launchers make the tensors' GPU current, or a
    model on cuda:1 would get kernels run on cuda:0 (with its stream)."""
    c = make_case(rows=rows)
    torch.cuda.set_device(0)
    for a, e in zip(run(c, backend="triton", device="cuda:1"), oracle(c)):
        assert_close(a, e, torch.float32)


# ---------------------------------------------------------------- Triton against the reference

@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("sizes", [(7, 7, 14, 14), (14, 14, 28, 28), (5, 5, 13, 13), (7, 7, 7, 7), (6, 8, 12, 16)],
                         ids=["7to14", "14to28", "5to13", "7to7", "6x8to12x16"])
def test_triton_matches_reference(sizes, rows, dtype):
    c = make_case(*(4, 6, 24), *sizes, rows=rows)
    if dtype != torch.float32:  # the oracle sees the inputs the kernel sees
        c = {k: v if v is None or not v.is_floating_point() else v.to(dtype).double() for k, v in c.items()}
    assert_all_close(run(c, backend="triton", dtype=dtype, device=DEVICE), oracle(c), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_writes_every_output_element_and_each_shared_row_once(monkeypatch, dtype):
    """Outputs poisoned with NaN before the kernels run; rows shared by several RoIs (in any order) and rows no RoI
    reads (they must get exact zeros, in the box features' dtype). Fails if a row kernel skipped an unread row, summed
    a row's RoIs partially, or the launcher left any element of out, cam or the gradients unwritten."""
    kernels = _triton_kernels()

    def poisoned(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(kernels, "_empty", poisoned)
    c = make_case(R=9, rows=True)
    c["box_features"] = torch.randn(6, 24, 7, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c["rows"] = torch.tensor([4, 0, 2, 2, 0, 4, 2, 5, 0])  # rows 1 and 3 unread
    if dtype != torch.float32:
        c = {k: v if v is None or not v.is_floating_point() else v.to(dtype).double() for k, v in c.items()}
    results = run(c, backend="triton", dtype=dtype, device=DEVICE)
    assert results[2].dtype == dtype
    assert results[2][[1, 3]].eq(0).all()
    assert_all_close(results, oracle(c), dtype)


@needs_triton
@pytest.mark.parametrize("R", [0, 1])
@pytest.mark.parametrize("rows", [False, True])
def test_triton_tiny_batches(R, rows):
    c = make_case(R=R, rows=rows)
    results = run(c, backend="triton", device=DEVICE)
    assert results[0].shape == (R, 6, 14, 14)
    assert_all_close(results, oracle(c), torch.float32)


@needs_triton
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_constant_cam_gives_zero_prior_and_zero_gradient(backend):
    c = make_case(R=3)
    c["box_features"][1] = 0.25  # every pixel of RoI 1's CAM is the same value
    results = run(c, backend=backend, device=device_for(backend))
    expected = oracle(c)
    assert_all_close(results, expected, torch.float32)
    torch.testing.assert_close(results[0][1].double().cpu(), c["mask_features"][1])  # no prior, no NaN
    assert results[2][1].abs().max() == 0


@pytest.mark.parametrize("dtype,offset,step", [(torch.bfloat16, 64.0, 0.125), (torch.float16, 2048.0, 0.5)])
def test_half_precision_cam_is_accumulated_in_float32(dtype, offset, step):
    """A CAM with a large common offset keeps its small spread: the reference (the CPU backend) sums it in float32,
    as the kernels do (in the input's half precision the offset would round the spread away: a prior of [0, 0, 0, 1]
    below)."""
    bf = torch.zeros(1, 2, 2, 2)
    bf[0, 0] = offset
    bf[0, 1] = torch.tensor([[0.0, 1.0], [2.0, 3.0]]) * step  # a quarter of dtype's spacing at the offset
    bf, w, cls = bf.to(dtype), torch.ones(1, 2, dtype=dtype), torch.tensor([0])  # every value exact in dtype
    expected = ref.object_prior(bf.double(), w.double(), cls).flatten()
    torch.testing.assert_close(expected, torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=torch.float64))
    got = object_prior(bf, w, cls, backend="reference")
    assert got.dtype == dtype
    torch.testing.assert_close(got.double().flatten(), expected, atol=TOL[dtype], rtol=0)
    out = object_prior_add(torch.zeros(1, 1, 2, 2, dtype=dtype), bf, w, cls, backend="reference")
    torch.testing.assert_close(out.double().flatten(), expected, atol=TOL[dtype], rtol=0)
    # Gradients of random half-precision inputs against the float64 oracle on the same values (rounded to a
    # half-precision CAM, near-equal pixels tie as min or max and split their gradient).
    c = make_case(R=2, D=2, C=16, hb=3, wb=5, hm=6, wm=6, seed=108, K=4)
    c = {k: v if v is None or not v.is_floating_point() else v.to(dtype).double() for k, v in c.items()}
    assert_all_close(run(c, backend="reference", dtype=dtype), oracle(c), dtype)


def test_compiles_with_a_float_scale_and_mixed_dtypes_add_exactly():
    """A float gain passes torch.compile(fullgraph=True) (traced, it may be symbolic: no host check on it); float64
    mask features plus a float32 prior are summed in float64; the in-place op rounds as the out-of-place one."""
    c = make_case(R=3)
    mf, bf, w = (c[k].float() for k in ("mask_features", "box_features", "cls_weight"))

    def f(mf, bf, w, scale):
        return object_prior_add(mf, bf, w, c["classes"], None, True, scale, backend="reference")

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    for scale in (0.5, 2.0):
        torch.testing.assert_close(compiled(mf, bf, w, scale), f(mf, bf, w, scale))
    prior = ref.resized_prior(ref.class_activation(bf, w, c["classes"]).view(-1, 7, 7), (14, 14), True, 0.5)
    assert prior.dtype == torch.float32
    assert torch.equal(f(c["mask_features"], bf, w, 0.5), c["mask_features"] + prior.double())
    for dtype in (torch.bfloat16, torch.float16):
        target = mf.to(dtype)
        want = object_prior_add(target, bf.to(dtype), w.to(dtype), c["classes"], scale=0.5, backend="reference")
        object_prior_add_(target, bf.to(dtype), w.to(dtype), c["classes"], scale=0.5, backend="reference")
        assert torch.equal(target, want), dtype


@needs_triton
def test_triton_ties_and_no_normalize():
    c = make_case(rows=True)
    c["box_features"] = c["box_features"].relu()
    c["box_features"][:, :, 0, :3] = 0
    c["cls_weight"] = c["cls_weight"].abs()
    assert_all_close(run(c, backend="triton", device=DEVICE), oracle(c), torch.float32)
    c = make_case(hb=5, wb=6, hm=9, wm=11)
    assert_all_close(run(c, backend="triton", device=DEVICE, normalize=False), oracle(c, normalize=False),
                     torch.float32)


@needs_triton
def test_triton_non_contiguous_inputs():
    c = make_case(rows=True)
    R, D, hm, wm = c["mask_features"].shape
    nc = dict(c)
    nc["mask_features"] = c["mask_features"].permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    nc["box_features"] = c["box_features"].contiguous(memory_format=torch.channels_last)
    nc["cls_weight"] = c["cls_weight"].t().contiguous().t()
    nc["classes"] = torch.stack([c["classes"], c["classes"]], 1)[:, 0]
    nc["grad_out"] = c["grad_out"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not any(nc[k].is_contiguous() for k in ("mask_features", "cls_weight", "classes", "grad_out"))
    leaves = [nc[k].to(DEVICE, torch.float32) for k in ("mask_features", "box_features", "cls_weight")]
    assert not leaves[0].is_contiguous() and not leaves[1].is_contiguous()
    assert_all_close(run(nc, backend="triton", device=DEVICE), oracle(c), torch.float32)


@needs_triton
@pytest.mark.parametrize("scale", [None, 2.5])
def test_triton_in_place_and_prior_alone(scale):
    c = make_case(R=3, rows=True)
    args = [c[k].float().to(DEVICE) for k in ("mask_features", "box_features", "cls_weight")]
    idx = [c["classes"].to(DEVICE), c["rows"].to(DEVICE)]
    expected = ref.object_prior_add(*[a.double() for a in args], *idx, True, scale)
    target = args[0].clone()
    assert object_prior_add_(target, *args[1:], *idx, scale=scale, backend="triton") is target
    assert_close(target, expected, torch.float32)
    strided = args[0].transpose(2, 3).clone().transpose(2, 3)  # in place into a non-contiguous tensor
    object_prior_add_(strided, *args[1:], *idx, scale=scale, backend="triton")
    assert_close(strided, expected, torch.float32)
    prior = object_prior(args[1], args[2], *idx, backend="triton")
    assert prior.shape == (3, 7, 7)
    assert_close(prior, ref.object_prior(*[a.double() for a in args[1:]], *idx), torch.float32)
    # Resized to the mask size (the fused-RoIAlign map): the prior term of object_prior_add alone.
    prior = object_prior(args[1], args[2], *idx, backend="triton", size=(14, 14), scale=scale)
    zeros = torch.zeros(3, 1, 14, 14, dtype=torch.float64, device=DEVICE)
    assert_close(prior, ref.object_prior_add(zeros, *[a.double() for a in args[1:]], *idx, True, scale)[:, 0],
                 torch.float32)


def test_reference_in_place_and_refusal_under_autograd():
    c = make_case(R=3, rows=True)
    args = [c[k] for k in ("mask_features", "box_features", "cls_weight")] + [c["classes"], c["rows"]]
    target = args[0].clone()
    object_prior_add_(target, *args[1:], scale=0.5, backend="reference")
    torch.testing.assert_close(target, ref.object_prior_add(*args, True, 0.5))
    with pytest.raises(RuntimeError, match="inference"):
        object_prior_add_(target, args[1].requires_grad_(), *args[2:])


@needs_triton
def test_triton_poisoned_outputs_and_guard_regions(monkeypatch):
    # Outputs start as NaN (torch.empty may return anything), inputs and outputs sit between NaN guard regions:
    # an unwritten element, or a load past the ends whose value reaches a result, shows up as NaN, and a stray
    # store as a changed guard.
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))

    def guarded(t):
        buf = torch.full((t.numel() + 128,), float("nan"), dtype=t.dtype, device=t.device)
        buf[64:64 + t.numel()] = t.reshape(-1)
        return buf, buf[64:64 + t.numel()].view_as(t)

    c = make_case(R=3, D=5, C=13, hb=5, wb=5, hm=13, wm=13)
    c["box_features"] = c["box_features"][:3]  # N == R: the box-feature grad is stored, not zero-filled
    bufs, views = zip(*(guarded(c[k].float().to(DEVICE)) for k in ("mask_features", "box_features", "cls_weight")))
    leaves = [v.requires_grad_() for v in views]
    out = object_prior_add(*leaves, c["classes"].to(DEVICE), None, True, 2.0, backend="triton")
    go_buf, go = guarded(c["grad_out"].float().to(DEVICE))
    out.backward(go)
    expected = oracle(c, scale=2.0)
    for a, e in zip([out, leaves[0].grad, leaves[1].grad, leaves[2].grad], expected):
        assert torch.isfinite(a).all()
        assert_close(a, e, torch.float32)
    with torch.no_grad():
        object_prior_add_(views[0], *views[1:], c["classes"].to(DEVICE), None, True, 2.0, backend="triton")
    for buf in bufs + (go_buf,):
        assert buf[:64].isnan().all() and buf[-64:].isnan().all()


# ---------------------------------------------------------------- validation and the module

@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_bad_input_raises_before_any_kernel(backend, monkeypatch):
    monkeypatch.setattr(op_module, "_triton_kernels", lambda: pytest.fail("a kernel ran on bad input"))
    monkeypatch.setattr(ref, "class_activation", lambda *a: pytest.fail("a kernel ran on bad input"))
    c = make_case(R=3, rows=True)
    mf, bf, w = c["mask_features"].float(), c["box_features"].float(), c["cls_weight"].float()
    cls, rows = c["classes"], c["rows"]

    def call(*args, **kw):
        dev = device_for(backend)
        args = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        return object_prior_add(*args, backend=backend, **kw)

    with pytest.raises(IndexError, match="classes"):
        call(mf, bf, w, torch.tensor([0, K, 1]), rows)
    with pytest.raises(IndexError, match="classes"):
        call(mf, bf, w, torch.tensor([0, -1, 1]), rows)
    with pytest.raises(IndexError, match="rows"):
        call(mf, bf, w, cls, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="classes must be Tensor"):
        call(mf, bf, w, cls[:2], rows)
    with pytest.raises(ValueError, match="rows must be Tensor"):
        call(mf, bf, w, cls, rows[:2])
    with pytest.raises(ValueError, match="need N >= R"):
        call(mf, bf[:2], w, cls)
    with pytest.raises(ValueError, match="mask_features must be"):
        call(mf[0], bf, w, cls, rows)
    with pytest.raises(ValueError, match="cls_weight must be"):
        call(mf, bf, w[:, :5], cls, rows)
    with pytest.raises(TypeError, match="classes must be an integer"):
        call(mf, bf, w, cls.float(), rows)
    with pytest.raises(TypeError, match="box_features must be a floating"):
        call(mf, bf.long(), w, cls, rows)
    with pytest.raises(ValueError, match="one floating element"):
        call(mf, bf, w, cls, rows, scale=torch.ones(2))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be a finite number"):
            call(mf, bf, w, cls, rows, scale=bad)
    with pytest.raises(ValueError, match="backend"):
        object_prior_add(mf, bf, w, cls, rows, backend="cuda")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    c = make_case(R=1)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        object_prior_add(c["mask_features"].float(), c["box_features"].float(), c["cls_weight"].float(),
                         c["classes"], backend="triton")
    with pytest.raises(ValueError, match="float64"):
        object_prior_add(c["mask_features"], c["box_features"], c["cls_weight"], c["classes"], backend="triton")


def test_object_mask_prior_adaptive_weight_is_the_models():
    """The swap-in module and the model share one definition of the prior's weight: with feature_std the module adds
    the resized prior times each RoI's std(features) / std(prior) (fails if the module ignored the adaptive mode and
    added the prior as is)."""
    classifier = torch.nn.Linear(24, K)
    c = make_case(R=4, rows=True)
    mf, bf = c["mask_features"].float(), c["box_features"].float()
    module = ObjectMaskPrior(classifier=classifier, scale="feature_std")
    resized = object_prior(bf, classifier.weight, c["classes"], c["rows"], size=tuple(mf.shape[-2:]),
                           backend="reference")
    gain = mf.flatten(1).std(dim=1) / resized.flatten(1).std(dim=1)
    expected = mf + gain.view(-1, 1, 1, 1) * resized[:, None]
    torch.testing.assert_close(module(mf, bf, c["classes"], c["rows"]), expected)
    assert not torch.allclose(module(mf, bf, c["classes"], c["rows"]),
                              ObjectMaskPrior(classifier=classifier)(mf, bf, c["classes"], c["rows"]))


def test_object_mask_prior_module():
    classifier = torch.nn.Linear(24, K)
    c = make_case(R=3, rows=True)
    mf, bf = c["mask_features"].float().requires_grad_(), c["box_features"].float().requires_grad_()
    faithful = ObjectMaskPrior(classifier=classifier)
    assert list(faithful.state_dict()) == []  # the classifier stays the box head's parameter
    out = faithful(mf, bf, c["classes"], c["rows"])
    expected = ref.object_prior_add(mf, bf, classifier.weight, c["classes"], c["rows"])
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert classifier.weight.grad is None and bf.grad.abs().sum() > 0  # the weight is detached, the features are not
    learnable = ObjectMaskPrior(classifier=classifier, scale="learnable", detach_weight=False)
    assert list(learnable.state_dict()) == ["prior_weight.gain", "prior_weight.initialized"]
    learnable(mf, bf, c["classes"], c["rows"]).square().sum().backward()
    assert learnable.prior_weight.gain.grad is not None and classifier.weight.grad is not None
    torch.testing.assert_close(ObjectMaskPrior(classifier=classifier, scale=3.0).prior(bf, c["classes"], c["rows"]),
                               ref.object_prior(bf, classifier.weight, c["classes"], c["rows"]))
    with pytest.raises(ValueError, match="scale"):
        ObjectMaskPrior(classifier=classifier, scale="big")
    # Without a classifier the weight comes with each call (the swap-in passes its predictor's current one).
    free = ObjectMaskPrior()
    torch.testing.assert_close(free(mf, bf, c["classes"], c["rows"], classifier.weight),
                               ObjectMaskPrior(classifier=classifier)(mf, bf, c["classes"], c["rows"]))
    with pytest.raises(ValueError, match="without a classifier: give cls_weight"):
        free(mf, bf, c["classes"], c["rows"])


COMPILE_SCRIPT = r"""
import inspect, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from opmask_fast.ops.object_prior_add import _triton_kernels
k = _triton_kernels()
FLOATS = ("scale_value", "scale_h", "scale_w", "eps")
SHAPES = dict(D=256, C=1024, P=49, Q=196, Hb=7, Wb=7, Wm=14)  # the R-50 preset's, compile-time constants
def compile_kernel(kernel, dtype, flags, arch):
    names = list(inspect.signature(kernel.fn).parameters)
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in flags or n.startswith("BLOCK_") or n in SHAPES:
            sig[n] = "constexpr"
        elif n in ("cls_ptr", "rows_ptr", "order_ptr", "start_ptr"):
            sig[n] = "*i64"
        elif n in ("mf_ptr", "bf_ptr", "out_ptr", "go_ptr") or (n == "gbf_ptr" and not flags.get("HAS_ROWS")):
            sig[n] = "*" + dtype
        elif n.endswith("_ptr"):
            sig[n] = "*fp32"
        else:
            sig[n] = "fp32" if n in FLOATS else "i32"
        if n.endswith("_ptr"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # as the launch specialises a 16-byte aligned tensor (torch's are)
    values = {**{n: v for n, v in SHAPES.items() if n in names}, **flags, **k._blocks(1024, 49, 196, 256)}
    consts = {(names.index(n),): v for n, v in values.items() if n in names}
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32))
def vector_ops(compiled):
    ptx = compiled.asm["ptx"]
    return sorted(set(re.findall(r"(?:ld|st)\.global\.v[24]\.b32", ptx)))
for arch in (80, 90):
    for rows in (False, True):
        dtype = "bf16" if rows else "fp32"
        fwd = dict(HAS_ROWS=rows, SCALE_PTR=rows, NORMALIZE=True)
        c = compile_kernel(k._object_prior_add_fwd_kernel, dtype, dict(fwd, READ_MF=True, STORE_PRIOR=False), arch)
        print(f"vector sm_{arch} fwd {dtype}: {' '.join(vector_ops(c))}")
        compile_kernel(k._object_prior_add_fwd_kernel, dtype, dict(fwd, READ_MF=False, STORE_PRIOR=True), arch)
        bwd = dict(fwd, NEED_BF=True, NEED_W=rows, NEED_S=rows)
        c = compile_kernel(k._object_prior_add_bwd_kernel, dtype, bwd, arch)
        print(f"vector sm_{arch} bwd {dtype}: {' '.join(vector_ops(c))}")
    compile_kernel(k._box_grad_rows_kernel, "bf16", {}, arch)
print("compiled")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_triton_kernels_compile_for_gpus(tmp_path):
    # The interpreter runs the kernels' Python, not their compilation: lower them to sm_80/sm_90 cubins here, without
    # a GPU, so a kernel that would not compile fails on any machine.
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
    # The shapes are compile-time constants, so the mask features' rows (Q = 196 elements: 784 bytes in fp32, 392 in
    # bf16) are known aligned: their loads and stores must be vector instructions (16 bytes per thread in fp32, 8 in
    # bf16, the rows' alignment), and the backward's reads of grad_out too.
    vector = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith("vector "))
    for arch in (80, 90):
        assert vector[f"vector sm_{arch} fwd fp32"].split() == ["ld.global.v4.b32", "st.global.v4.b32"], vector
        assert vector[f"vector sm_{arch} fwd bf16"].split() == ["ld.global.v2.b32", "st.global.v2.b32"], vector
        assert vector[f"vector sm_{arch} bwd fp32"].split() == ["ld.global.v4.b32"], vector
        assert vector[f"vector sm_{arch} bwd bf16"].split() == ["ld.global.v2.b32"], vector
