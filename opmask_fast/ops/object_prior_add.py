"""The object mask prior as a torch.library custom op: `opmask_fast::object_prior_add`.

For each RoI r the prior is the class activation map (CAM) of its class, cam = cls_weight[classes[r]] .
box_features[rows[r]], min-max normalised (a constant CAM gives a zero prior), resized bilinearly to the mask
features' size and added, times a gain, to every channel: out[r, d] = mask_features[r, d] + scale * resize(cam).
Backends: "triton" (one fused kernel per direction, kernels/object_prior_add_jit.py) and "reference" (plain PyTorch,
opmask_fast/ops/reference/object_prior_add.py); "auto" takes Triton for CUDA tensors when it is installed. With
TRITON_INTERPRET=1, backend="triton" runs the Triton kernels on CPU tensors (how the tests check them without a GPU).

The op is registered with custom_op, which defines it through a FRAGMENT library, so it shares the `opmask_fast`
namespace with the C++ ops. It has a fake kernel (torch.compile, meta tensors) and an autograd formula backed by a
second op, `opmask_fast::object_prior_add_backward`.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Optional

import torch
from torch import Tensor

from opmask_fast.ops.reference import object_prior_add as _ref
from opmask_fast.ops._tracing import fx_leaf, is_compiling
from opmask_fast.ops._triton import _interpreting, _triton_kernels

BACKENDS = ("auto", "triton", "reference")


def _resolve_backend(backend: str, mask_features: Tensor, box_features: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    fits = box_features.shape[-2] * box_features.shape[-1] <= 1024 and torch.float64 not in (
        mask_features.dtype, box_features.dtype)
    if backend == "auto":
        usable = mask_features.is_cuda and importlib.util.find_spec("triton") is not None
        return "triton" if usable and fits else "reference"
    if backend == "triton":
        if not fits:
            raise ValueError("the Triton kernels compute in float32 with at most 1024 CAM pixels (Hb * Wb); "
                             "use backend='reference' for float64 or larger box feature maps")
        if not mask_features.is_cuda and not _interpreting():
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the Triton "
                             "interpreter on CPU tensors)")
    return backend


def _check_shapes(mask_features: Optional[Tensor], box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                  rows: Optional[Tensor], scale: Optional[Tensor], size: Optional[tuple] = None) -> None:
    """Shape, dtype and device checks; cheap, and valid on fake tensors too. Without mask features (`object_prior`)
    the RoI count is classes' and `size` is the output's."""
    if (mask_features is not None and mask_features.dim() != 4) or box_features.dim() != 4 or classes.dim() != 1:
        raise ValueError(f"mask_features must be Tensor[R, D, Hm, Wm], box_features Tensor[N, C, Hb, Wb] and classes "
                         f"Tensor[R], got {None if mask_features is None else tuple(mask_features.shape)}, "
                         f"{tuple(box_features.shape)} and {tuple(classes.shape)}")
    if cls_weight.dim() != 2 or cls_weight.shape[1] != box_features.shape[1]:
        raise ValueError(f"cls_weight must be Tensor[K, C] with C = {box_features.shape[1]} (box feature channels), "
                         f"got {tuple(cls_weight.shape)}")
    R = classes.shape[0] if mask_features is None else mask_features.shape[0]
    if classes.shape != (R,):
        raise ValueError(f"classes must be Tensor[R] with R = {R} mask RoIs, got {tuple(classes.shape)}")
    if rows is not None and rows.shape != (R,):
        raise ValueError(f"rows must be Tensor[R] with R = {R} mask RoIs, got {tuple(rows.shape)}")
    if rows is None and R > box_features.shape[0]:
        raise ValueError(f"without rows, RoI r takes box_features[r]: need N >= R, got N = {box_features.shape[0]}, "
                         f"R = {R}")
    for name, t in (("mask_features", mask_features), ("box_features", box_features), ("cls_weight", cls_weight)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    for name, t in (("classes", classes), ("rows", rows)):
        if t is not None and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if scale is not None and (scale.numel() != 1 or not scale.is_floating_point()):
        raise ValueError(f"a tensor scale must be one floating element, got {scale.dtype} {tuple(scale.shape)}")
    out_size = tuple(mask_features.shape[2:]) if mask_features is not None else tuple(size)
    if len(out_size) != 2 or min(out_size) < 1 or min(box_features.shape[2:]) < 1:
        raise ValueError(f"mask (output) and box feature maps must have a non-empty spatial size, got {out_size} and "
                         f"{tuple(box_features.shape[2:])}")
    tensors = [t for t in (mask_features, box_features, cls_weight, classes, rows, scale) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted({str(t.device) for t in tensors})}")


def _check_ranges(classes: Tensor, rows: Optional[Tensor], num_classes: int, num_rows: int) -> None:
    """Index range checks before any kernel runs (an out-of-range index would read outside the tensors).

    One host sync for all four bounds; skipped for R = 0. CUDA tensors are checked on the device instead
    (`torch._assert_async`, no sync): the Python wrappers have already raised the readable IndexError for a direct
    call (`validate=True`), and the model's static path must not wait for the host.
    """
    if classes.numel() == 0:
        return
    if classes.is_cuda:
        ok = (classes >= 0).all() & (classes < num_classes).all()
        if rows is not None:
            ok = ok & (rows >= 0).all() & (rows < num_rows).all()
        torch._assert_async(ok, "opmask_fast::object_prior_add: a class or row index is out of range")
        return
    idx = [classes] if rows is None else [classes, rows]
    lo_hi = torch.stack([v for t in idx for v in (t.min(), t.max())]).tolist()
    if lo_hi[0] < 0 or lo_hi[1] >= num_classes:
        raise IndexError(f"classes must lie in [0, {num_classes}) (cls_weight rows), got [{lo_hi[0]}, {lo_hi[1]}]")
    if rows is not None and (lo_hi[2] < 0 or lo_hi[3] >= num_rows):
        raise IndexError(f"rows must lie in [0, {num_rows}) (box_features rows), got [{lo_hi[2]}, {lo_hi[3]}]")


def _cam_dtype(box_features: Tensor) -> torch.dtype:
    return _ref.cam_dtype(box_features.dtype)


def _reference_forward(mf, bf, w, classes, rows, normalize, scale_value, scale):
    cam = _ref.class_activation(bf, w, classes, rows)
    out = _ref.add_prior(mf, cam.view(-1, *bf.shape[-2:]), normalize, scale if scale is not None else scale_value)
    # Contiguous whatever mask_features' layout (channels-last, a transposed view), as the Triton kernel and the fake.
    return out.contiguous(), cam.to(_cam_dtype(bf))


@torch.library.custom_op("opmask_fast::object_prior_add", mutates_args=())
def _object_prior_add_op(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                         rows: Optional[Tensor], normalize: bool, scale_value: float, scale: Optional[Tensor],
                         backend: str) -> tuple[Tensor, Tensor]:
    """Returns (out Tensor[R, D, Hm, Wm], raw cam Tensor[R, Hb * Wb] float32/float64, kept for the backward)."""
    # The shapes again (free): a direct call of the op skips the wrapper, and the kernels trust R <= N.
    _check_shapes(mask_features, box_features, cls_weight, classes, rows, scale)
    _check_ranges(classes, rows, cls_weight.shape[0], box_features.shape[0])
    classes = classes.long()
    rows = None if rows is None else rows.long()
    if backend == "triton":
        return _triton_kernels().object_prior_add_forward(
            mask_features, box_features, cls_weight, classes, rows, normalize, scale_value, scale)
    with torch.no_grad():
        return _reference_forward(mask_features, box_features, cls_weight, classes, rows, normalize, scale_value,
                                  scale)


@_object_prior_add_op.register_fake
def _(mask_features, box_features, cls_weight, classes, rows, normalize, scale_value, scale, backend):
    R = mask_features.shape[0]
    P = box_features.shape[2] * box_features.shape[3]
    out = torch.empty_like(mask_features, memory_format=torch.contiguous_format)
    return out, mask_features.new_empty((R, P), dtype=_cam_dtype(box_features))


@torch.library.custom_op("opmask_fast::object_prior_add_backward", mutates_args=())
def _object_prior_add_backward_op(grad_out: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                                  rows: Optional[Tensor], cam: Tensor, normalize: bool, scale_value: float,
                                  scale: Optional[Tensor], backend: str, need_box: bool, need_weight: bool,
                                  need_scale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Grads of (box_features, cls_weight, scale); the ones not asked for are empty tensors."""
    _check_shapes(grad_out, box_features, cls_weight, classes, rows, scale)
    hw = box_features.shape[2] * box_features.shape[3]
    if cam.shape != (classes.shape[0], hw):
        raise ValueError(f"cam must be Tensor[R, Hb * Wb] = {(classes.shape[0], hw)}, got {tuple(cam.shape)}")
    _check_ranges(classes, rows, cls_weight.shape[0], box_features.shape[0])
    classes = classes.long()
    rows = None if rows is None else rows.long()
    needs = (need_box, need_weight, need_scale)
    if backend == "triton":
        grads = _triton_kernels().object_prior_add_backward(
            grad_out, box_features, cls_weight, classes, rows, cam, normalize, scale_value, scale, needs)
    else:
        grads = _ref.object_prior_add_backward(grad_out, box_features, cls_weight, classes, rows, cam, normalize,
                                               scale if scale is not None else scale_value, needs)
    dtypes = (box_features.dtype, cls_weight.dtype, scale.dtype if scale is not None else grad_out.dtype)
    return tuple(grad_out.new_empty(0) if g is None else g.to(dt) for g, dt in zip(grads, dtypes))


@_object_prior_add_backward_op.register_fake
def _(grad_out, box_features, cls_weight, classes, rows, cam, normalize, scale_value, scale, backend, need_box,
      need_weight, need_scale):
    # Contiguous, as both backends return them, whatever the inputs' layout.
    dense = torch.contiguous_format
    return (torch.empty_like(box_features, memory_format=dense) if need_box else grad_out.new_empty(0),
            torch.empty_like(cls_weight, memory_format=dense) if need_weight else grad_out.new_empty(0),
            grad_out.new_empty(1, dtype=scale.dtype) if need_scale else grad_out.new_empty(0))


def _setup_context(ctx, inputs, output):
    mask_features, box_features, cls_weight, classes, rows, normalize, scale_value, scale, backend = inputs
    ctx.save_for_backward(box_features, cls_weight, classes, rows, output[1], scale)
    ctx.normalize, ctx.scale_value, ctx.backend = normalize, scale_value, backend
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, _grad_cam):
    box_features, cls_weight, classes, rows, cam, scale = ctx.saved_tensors
    need_mf, need_box, need_weight = ctx.needs_input_grad[:3]
    need_scale = scale is not None and ctx.needs_input_grad[7]
    grad_box = grad_weight = grad_scale = None
    if need_box or need_weight or need_scale:
        grad_box, grad_weight, grad_scale = _object_prior_add_backward_op(
            grad_out, box_features, cls_weight, classes, rows, cam, ctx.normalize, ctx.scale_value, scale,
            ctx.backend, need_box, need_weight, need_scale)
        grad_scale = grad_scale.reshape(scale.shape) if need_scale else None
    return (grad_out if need_mf else None, grad_box if need_box else None, grad_weight if need_weight else None,
            None, None, None, None, grad_scale, None)


_object_prior_add_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("opmask_fast::object_prior_add_", mutates_args=("mask_features",))
def _object_prior_add_inplace_op(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                                 rows: Optional[Tensor], normalize: bool, scale_value: float, scale: Optional[Tensor],
                                 backend: str) -> None:
    _check_shapes(mask_features, box_features, cls_weight, classes, rows, scale)
    _check_ranges(classes, rows, cls_weight.shape[0], box_features.shape[0])
    classes = classes.long()
    rows = None if rows is None else rows.long()
    if backend == "triton":
        # The kernel writes with contiguous strides: a strided target goes through a contiguous copy.
        target = mask_features if mask_features.is_contiguous() else mask_features.contiguous()
        _triton_kernels().object_prior_add_forward(target, box_features, cls_weight, classes, rows, normalize,
                                                   scale_value, scale, out=target)
        if target is not mask_features:
            mask_features.copy_(target)
        return
    cam = _ref.class_activation(box_features, cls_weight, classes, rows).view(-1, *box_features.shape[-2:])
    # The out-of-place sum (rounded once, as object_prior_add's) written back.
    mask_features.copy_(_ref.add_prior(mask_features, cam, normalize, scale if scale is not None else scale_value))


@_object_prior_add_inplace_op.register_fake
def _(mask_features, box_features, cls_weight, classes, rows, normalize, scale_value, scale, backend):
    return None


def _split_scale(scale: float | Tensor | None) -> tuple[float, Optional[Tensor]]:
    if scale is None:
        return 1.0, None
    if isinstance(scale, Tensor):
        return 1.0, scale
    # (A tensor gain is the caller's: it may be learnt. Traced, a float may be symbolic: no check there.)
    if not is_compiling() and not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale), None


@fx_leaf
def object_prior_add(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                     rows: Tensor | None = None, normalize: bool = True, scale: float | Tensor | None = None,
                     backend: str = "auto", *, validate: bool = True) -> Tensor:
    """Add each RoI's object mask prior to every channel of its mask features.

    Args:
        mask_features: Tensor[R, D, Hm, Wm], the RoIAlign mask features (e.g. 256 x 14 x 14).
        box_features: Tensor[N, C, Hb, Wb], the last box-head conv map (e.g. 1024 x 7 x 7).
        cls_weight: Tensor[K, C], the box classifier's weight (detach it to keep mask gradients out of the classifier,
            as OPMask does; when it requires grad it receives its gradient, accumulated by class).
        classes: Tensor[R] int64, the class row of cls_weight per RoI (GT class in training, predicted at inference).
        rows: Tensor[R] int64 or None, the box_features row of each RoI; None means row r.
        normalize: per-RoI min-max normalisation of the CAM to [0, 1] (a CAM whose spread is below 1e-6 gives 0).
        scale: the prior's gain: None (1, the paper), a float, or a one-element tensor that may require grad.
        backend: "auto", "triton" or "reference".
        validate: check the class and row indices on the host first (an IndexError naming the range; one sync on
            CUDA). The model passes False: its indices are in range by construction, and CUDA tensors are still
            checked on the device.

    Returns:
        Tensor[R, D, Hm, Wm]: mask_features + scale * bilinear_resize(prior), a new tensor.
    """
    scale_value, scale_t = _split_scale(scale)
    _check_shapes(mask_features, box_features, cls_weight, classes, rows, scale_t)
    if validate and classes.is_cuda and not is_compiling():
        _check_ranges(classes.cpu(), None if rows is None else rows.cpu(), cls_weight.shape[0],
                      box_features.shape[0])
    backend = _resolve_backend(backend, mask_features, box_features)
    out, _ = _object_prior_add_op(mask_features, box_features, cls_weight, classes, rows, normalize, scale_value,
                                  scale_t, backend)
    return out


def object_prior_add_(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                      rows: Tensor | None = None, normalize: bool = True, scale: float | Tensor | None = None,
                      backend: str = "auto") -> Tensor:
    """In-place `object_prior_add` for inference: writes into and returns mask_features (no autograd)."""
    scale_value, scale_t = _split_scale(scale)
    _check_shapes(mask_features, box_features, cls_weight, classes, rows, scale_t)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in
                                       (mask_features, box_features, cls_weight, scale_t)):
        raise RuntimeError("object_prior_add_ is for inference; use object_prior_add when gradients are needed")
    backend = _resolve_backend(backend, mask_features, box_features)
    _object_prior_add_inplace_op(mask_features, box_features, cls_weight, classes, rows, normalize, scale_value,
                                 scale_t, backend)
    return mask_features
