"""`object_prior` (opmask_fast::object_prior): the prior alone, resized and weighted, and with `with_unresized` the
unresized prior from the same launch; against the float64 reference forward and backward, on the reference backend
and the Triton kernels (interpreter on the CPU, compiled on a GPU), with poisoned outputs, odd sizes and zero RoIs."""

import importlib.util
import os

import pytest
import torch

from opmask_fast.ops import object_prior
from opmask_fast.ops.object_prior import _object_prior_op
from opmask_fast.ops.reference import object_prior_add as ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TRITON_OK = importlib.util.find_spec("triton") is not None and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="needs Triton with CUDA or TRITON_INTERPRET=1")
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def make_case(R=5, C=24, hb=7, wb=7, *, rows=True, seed=0, K=9):
    g = torch.Generator().manual_seed(seed)
    N = 3 if rows else R + 1
    return dict(box_features=torch.randn(N, C, hb, wb, generator=g, dtype=torch.float64),
                cls_weight=torch.randn(K, C, generator=g, dtype=torch.float64) * 0.3,
                classes=K - 1 - torch.randint(0, 3, (R,), generator=g),
                rows=torch.randint(0, N, (R,), generator=g) if rows else None)


def expected(case, size, scale, normalize=True):
    """float64 reference: the resized, weighted map and the unresized (normalised) prior."""
    prior = ref.object_prior(case["box_features"], case["cls_weight"], case["classes"], case["rows"], normalize)
    resized = ref.resized_prior(prior, size, normalize=False, scale=scale)[:, 0]
    return resized, prior


def close(got, want, dtype):
    err = (got.double().cpu() - want).abs().max().item() if want.numel() else 0.0
    assert err <= TOL.get(dtype, 1e-10) * max(1.0, want.abs().max().item() if want.numel() else 1.0), err


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("size,rows,scale,normalize", [((14, 14), True, None, True), ((13, 9), False, 2.5, True),
                                                        ((7, 7), True, 0.5, False), ((28, 28), False, None, False)])
def test_map_and_unresized_prior_from_one_call(backend, size, rows, scale, normalize):
    case = make_case(rows=rows)
    dtype = torch.float64 if backend == "reference" else torch.float32
    bf, w = (case[k].to(DEVICE, dtype) for k in ("box_features", "cls_weight"))
    idx = [None if case[k] is None else case[k].to(DEVICE) for k in ("classes", "rows")]
    want_map, want_prior = expected(case, size, scale, normalize)
    got_map, got_prior = object_prior(bf, w, *idx, normalize, size=size, scale=scale, with_unresized=True,
                                      backend=backend)
    assert got_map.shape == (5, *size) and got_prior.shape == (5, 7, 7)
    close(got_map, want_map, dtype)
    close(got_prior, want_prior, dtype)
    # The map alone is the same map.
    close(object_prior(bf, w, *idx, normalize, size=size, scale=scale, backend=backend), want_map, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.float16, torch.bfloat16] if CUDA else []))
def test_triton_writes_every_element(dtype, monkeypatch):
    """Outputs poisoned with NaN before the kernel runs: an element it leaves unwritten shows."""
    kernels = importlib.import_module("opmask_fast.ops.object_prior_add")._triton_kernels()
    monkeypatch.setattr(kernels, "_empty", lambda *s, dtype, device: torch.full(s, float("nan"), dtype=dtype,
                                                                               device=device))
    case = make_case(R=3, hb=5, wb=6)
    bf, w = (case[k].to(DEVICE, dtype) for k in ("box_features", "cls_weight"))
    idx = [case[k].to(DEVICE) for k in ("classes", "rows")]
    got_map, got_prior = object_prior(bf, w, *idx, size=(11, 12), with_unresized=True, backend="triton")
    assert torch.isfinite(got_map).all() and torch.isfinite(got_prior).all()
    want_map, want_prior = expected(case, (11, 12), None)
    close(got_map, want_map, dtype)
    close(got_prior, want_prior, dtype)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_backward_matches_the_reference(backend):
    """Gradients of the map (box features, classifier, tensor scale); the unresized prior carries none."""
    case = make_case()
    dtype = torch.float64 if backend == "reference" else torch.float32
    g = torch.Generator().manual_seed(1)
    grad_map = torch.randn(5, 14, 14, generator=g, dtype=torch.float64)

    def grads(fn, dt, device):
        leaves = [case[k].to(device, dt).requires_grad_() for k in ("box_features", "cls_weight")]
        s = torch.tensor([1.5], dtype=dt, device=device, requires_grad=True)
        out = fn(*leaves, s)
        return torch.autograd.grad(out, leaves + [s], grad_map.to(device, dt))

    idx = [case[k] for k in ("classes", "rows")]
    want = grads(lambda b, w, s: ref.resized_prior(ref.object_prior(b, w, *idx), (14, 14), False, s)[:, 0],
                 torch.float64, "cpu")
    dev_idx = [t.to(DEVICE) for t in idx]
    got = grads(lambda b, w, s: object_prior(b, w, *dev_idx, size=(14, 14), scale=s, with_unresized=True,
                                             backend=backend)[0], dtype, DEVICE)
    for a, b in zip(got, want):
        close(a, b, dtype)
    _, prior = object_prior(case["box_features"].requires_grad_(), case["cls_weight"], *idx, size=(14, 14),
                            with_unresized=True, backend="reference")
    assert not prior.requires_grad


def test_gradcheck_and_opcheck():
    case = make_case(R=3)
    idx = [case["classes"], case["rows"]]
    s = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, w, s: object_prior(b, w, *idx, size=(9, 11), scale=s,
                                                                 backend="reference"),
                                    (case["box_features"].requires_grad_(), case["cls_weight"].requires_grad_(), s))
    for rows, with_prior in ((idx[1], True), (None, False)):
        args = (case["box_features"], case["cls_weight"], case["classes"], rows, 14, 14, True, 1.0, None, "reference",
                with_prior)
        torch.library.opcheck(_object_prior_op, args)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_zero_rois(backend):
    case = make_case()
    dtype = torch.float64 if backend == "reference" else torch.float32
    bf, w = (case[k].to(DEVICE, dtype) for k in ("box_features", "cls_weight"))
    none = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    got_map, got_prior = object_prior(bf, w, none, none, size=(14, 14), with_unresized=True, backend=backend)
    assert got_map.shape == (0, 14, 14) and got_prior.shape == (0, 7, 7)


def test_errors_name_the_problem():
    case = make_case()
    bf, w, cls, rows = case["box_features"], case["cls_weight"], case["classes"], case["rows"]
    with pytest.raises(ValueError, match="cls_weight must be Tensor"):
        object_prior(bf, w[:, :5], cls, rows)
    with pytest.raises(ValueError, match="rows must be Tensor"):
        object_prior(bf, w, cls, rows[:2])
    with pytest.raises(ValueError, match="must have a non-empty spatial size"):
        object_prior(bf, w, cls, rows, size=(0, 14))
    with pytest.raises(IndexError, match="classes must lie in"):
        object_prior(bf, w, cls + 100, rows)
    with pytest.raises(IndexError, match="rows must lie in"):
        object_prior(bf, w, cls, rows + 100)
    with pytest.raises(TypeError, match="classes must be an integer tensor"):
        object_prior(bf, w, cls.double(), rows)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_direct_op_calls_check_shapes_too(backend):
    """The registered ops, called without the Python wrappers, refuse more RoIs than box-feature rows without `rows`
    (the kernels take row r for RoI r: they read, and the backward wrote, past the end of box_features)."""
    from opmask_fast.ops.object_prior_add import _object_prior_add_backward_op, _object_prior_add_op

    case = make_case(R=6, rows=False)
    bf, w, cls = case["box_features"][:1].float(), case["cls_weight"].float(), case["classes"]
    with pytest.raises(ValueError, match="need N >= R, got N = 1, R = 6"):
        _object_prior_op(bf, w, cls, None, 14, 14, True, 1.0, None, backend, False)
    with pytest.raises(ValueError, match="need N >= R, got N = 1, R = 6"):
        _object_prior_add_op(torch.zeros(6, 4, 14, 14), bf, w, cls, None, True, 1.0, None, backend)
    cam = torch.zeros(6, 49)
    with pytest.raises(ValueError, match="need N >= R, got N = 1, R = 6"):
        _object_prior_add_backward_op(torch.zeros(6, 1, 14, 14), bf, w, cls, None, cam, True, 1.0, None, backend,
                                      True, True, False)
    with pytest.raises(ValueError, match="cam must be Tensor"):
        _object_prior_add_backward_op(torch.zeros(6, 1, 14, 14), case["box_features"].float(), w, cls, None,
                                      cam[:, :5], True, 1.0, None, backend, True, True, False)
