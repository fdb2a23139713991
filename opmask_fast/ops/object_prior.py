"""The object mask prior alone as a torch.library custom op: `opmask_fast::object_prior`.

For each RoI r the class activation map of its class, cam = cls_weight[classes[r]] . box_features[rows[r]],
min-max normalised, resized bilinearly to (Hm, Wm) and times a gain: the per-RoI map that RoIAlign adds to every
channel as it writes (`roi_align(..., roi_map=...)`, the model's fused design). With `with_unresized=True` the same
call also returns the normalised prior at the box features' size (what the model returns per detection): on CUDA both
come from one kernel launch (kernels/object_prior_add_jit.py, the forward kernel with one mask channel it does not
read).
The backward is `object_prior_add`'s (opmask_fast::object_prior_add_backward) with one channel; the unresized prior
carries no gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from opmask_fast.ops._tracing import fx_leaf, is_compiling
from opmask_fast.ops.object_prior_add import (_cam_dtype, _check_ranges, _check_shapes,
                                              _object_prior_add_backward_op, _resolve_backend, _split_scale,
                                              _triton_kernels)
from opmask_fast.ops.reference import object_prior_add as _ref


@torch.library.custom_op("opmask_fast::object_prior", mutates_args=())
def _object_prior_op(box_features: Tensor, cls_weight: Tensor, classes: Tensor, rows: Optional[Tensor], height: int,
                     width: int, normalize: bool, scale_value: float, scale: Optional[Tensor], backend: str,
                     with_prior: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (map Tensor[R, Hm, Wm], prior Tensor[R, Hb, Wb] (empty unless `with_prior`), raw cam Tensor[R, Hb * Wb]
    float32/float64, kept for the backward)."""
    _check_shapes(None, box_features, cls_weight, classes, rows, scale, (height, width))  # a direct call too
    _check_ranges(classes, rows, cls_weight.shape[0], box_features.shape[0])
    classes = classes.long()
    rows = None if rows is None else rows.long()
    R, (Hb, Wb) = classes.shape[0], box_features.shape[-2:]
    if backend == "triton":
        out, prior, cam = _triton_kernels().object_prior_forward(
            box_features, cls_weight, classes, rows, (height, width), normalize, scale_value, scale, with_prior)
        return out, box_features.new_empty(0) if prior is None else prior.view(R, Hb, Wb), cam
    with torch.no_grad():
        cam = _ref.class_activation(box_features, cls_weight, classes, rows)
        # Normalised once, for both outputs; unnormalised, a copy (an op's outputs must not alias each other).
        prior = (_ref.normalize_cam(cam) if normalize else cam.clone()).view(R, Hb, Wb)
        out = _ref.resized_prior(prior, (height, width), False, scale if scale is not None else scale_value)
        return (out.squeeze(1).to(box_features.dtype),
                prior.to(box_features.dtype) if with_prior else cam.new_empty(0, dtype=box_features.dtype),
                cam.to(_cam_dtype(box_features)))


@_object_prior_op.register_fake
def _(box_features, cls_weight, classes, rows, height, width, normalize, scale_value, scale, backend, with_prior):
    R = classes.shape[0]
    Hb, Wb = box_features.shape[-2:]
    prior = box_features.new_empty((R, Hb, Wb)) if with_prior else box_features.new_empty(0)
    return (box_features.new_empty((R, height, width)), prior,
            box_features.new_empty((R, Hb * Wb), dtype=_cam_dtype(box_features)))


def _setup_context(ctx, inputs, output):
    box_features, cls_weight, classes, rows, height, width, normalize, scale_value, scale, backend, _ = inputs
    ctx.save_for_backward(box_features, cls_weight, classes, rows, output[2], scale)
    ctx.normalize, ctx.scale_value, ctx.backend = normalize, scale_value, backend
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_map, _grad_prior, _grad_cam):
    box_features, cls_weight, classes, rows, cam, scale = ctx.saved_tensors
    need_box, need_weight = ctx.needs_input_grad[:2]
    need_scale = scale is not None and ctx.needs_input_grad[8]
    grad_box = grad_weight = grad_scale = None
    if need_box or need_weight or need_scale:
        grad_box, grad_weight, grad_scale = _object_prior_add_backward_op(
            grad_map.unsqueeze(1), box_features, cls_weight, classes, rows, cam, ctx.normalize, ctx.scale_value,
            scale, ctx.backend, need_box, need_weight, need_scale)
        grad_scale = grad_scale.reshape(scale.shape) if need_scale else None
    return (grad_box if need_box else None, grad_weight if need_weight else None, None, None, None, None, None, None,
            grad_scale, None, None)


_object_prior_op.register_autograd(_backward, setup_context=_setup_context)


@fx_leaf
def object_prior(box_features: Tensor, cls_weight: Tensor, classes: Tensor, rows: Tensor | None = None,
                 normalize: bool = True, backend: str = "auto", *, size: tuple[int, int] | None = None,
                 scale: float | Tensor | None = None, with_unresized: bool = False,
                 validate: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """The prior alone: each RoI's (normalised) CAM, Tensor[R, Hb, Wb], differentiable like `object_prior_add`.

    Args:
        box_features, cls_weight, classes, rows, normalize, backend, validate: as `object_prior_add`'s.
        size: (Hm, Wm) to return the prior resized bilinearly to Tensor[R, Hm, Wm] (and times `scale`): the per-RoI
            map that RoIAlign adds as it writes, and each detection's prior returned by the model. None: (Hb, Wb), an
            exact identity resize.
        scale: the map's gain (None: 1), a float or a one-element tensor that may require grad.
        with_unresized: also return the normalised prior at (Hb, Wb), unscaled and without gradient, from the same
            pass: `(map, prior)`.
    """
    size = tuple(box_features.shape[-2:]) if size is None else tuple(size)
    scale_value, scale_t = _split_scale(scale)
    _check_shapes(None, box_features, cls_weight, classes, rows, scale_t, size)
    if validate and classes.is_cuda and not is_compiling():
        _check_ranges(classes.cpu(), None if rows is None else rows.cpu(), cls_weight.shape[0], box_features.shape[0])
    # The backend choice reads the mask features' device and dtype: those of the map it writes.
    backend = _resolve_backend(backend, box_features, box_features)
    out, prior, _ = _object_prior_op(box_features, cls_weight, classes, rows, int(size[0]), int(size[1]), normalize,
                                     scale_value, scale_t, backend, with_unresized)
    return (out, prior) if with_unresized else out

