"""RoIAlign (torchvision-compatible) with an optional fused addend ``roi_map``.

``roi_align`` validates its inputs in Python, then calls the compiled ``torch.ops.opmask_fast.roi_align`` (CPU:
multi-threaded, deterministic; CUDA: float16/bfloat16 too) or, without ``opmask_fast._C``, the pure-PyTorch
reference. Fake kernels and autograd for the compiled op are registered here, so ``torch.compile`` can trace it
and gradients flow to ``input`` and ``roi_map`` (never to the boxes, as in torchvision).
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import Tensor

from opmask_fast import _extension
from opmask_fast.ops import reference
from opmask_fast.ops._tracing import fx_leaf, values_unreadable

__all__ = ["roi_align", "convert_boxes_to_roi_format"]

# One RoI may ask for at most this many bilinear samples per channel (bins x adaptive grid). Beyond it the work
# would run for minutes (a box spanning millions of pixels); such a box is a bug upstream, so it is refused.
MAX_SAMPLES_PER_ROI = 2**26
# Samples per bin along one axis (an explicit sampling_ratio, or an adaptive grid): the kernels' kMaxGridPerAxis
# (csrc/roi_align_common.h), where they clamp a direct op call's grid instead of taking any memory.
MAX_GRID_PER_AXIS = 2**13

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_int(value, name: str) -> int:
    """``value`` as a Python int: ints and NumPy's integer scalars; a float (even 2.0) or a bool raises TypeError."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _pair(output_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(output_size, (tuple, list)):
        size = tuple(as_int(s, "output_size") for s in output_size)
    else:
        size = (as_int(output_size, "output_size"),) * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"output_size must be a positive int or a pair of positive ints, got {output_size!r}")
    return size  # type: ignore[return-value]


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    """List of Tensor[L_i, 4] (one per image) -> Tensor[sum L_i, 5] with the image index in column 0."""
    if len(boxes) == 0:
        raise ValueError("boxes is an empty list; pass a Tensor[0, 5] for no boxes")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be a Tensor[L, 4], got {getattr(b, 'shape', type(b))}")
    cat = torch.cat([b for b in boxes], dim=0)
    if cat.is_floating_point():
        # float16 holds image indices exactly up to 2048, bfloat16 up to 256: the index column is float32 at least.
        cat = cat.to(torch.promote_types(cat.dtype, torch.float32))
    idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=cat.dtype, device=cat.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, cat], dim=1)


def check_roi_align_inputs(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
                           spatial_scale: float, sampling_ratio: int, roi_map: Tensor | None,
                           aligned: bool = False) -> tuple[Tensor, tuple[int, int], Tensor | None]:
    """Validate RoIAlign arguments; return (rois Tensor[K, 5] in the coordinate dtype, (Ho, Wo), roi_map).

    Raises ValueError / TypeError with a message naming the offending argument, before any kernel runs.
    """
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"input must be a Tensor[N, C, H, W], got {getattr(input, 'shape', type(input))}")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input must be float16/bfloat16/float32/float64, got {input.dtype}")
    ph, pw = _pair(output_size)
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a positive finite float, got {spatial_scale}")
    sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
    if sampling_ratio > MAX_GRID_PER_AXIS:
        raise ValueError(f"sampling_ratio must be <= {MAX_GRID_PER_AXIS} (samples per bin side), got {sampling_ratio}")
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > input.shape[0]:
            raise ValueError(f"got boxes for {len(boxes)} images but input has batch size {input.shape[0]}")
        rois = convert_boxes_to_roi_format(list(boxes))
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if not rois.is_floating_point():
        raise TypeError(f"boxes must be floating point, got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(f"boxes are on {rois.device} but input is on {input.device}")
    # float16 cannot hold pixel coordinates of a large image exactly: box maths runs in float32 (float64 for float64).
    rois = rois.to(torch.promote_types(input.dtype, torch.float32))
    k = rois.shape[0]
    if roi_map is not None:
        if not isinstance(roi_map, Tensor) or tuple(roi_map.shape) != (k, ph, pw):
            raise ValueError(f"roi_map must be a Tensor[{k}, {ph}, {pw}], got {getattr(roi_map, 'shape', roi_map)}")
        if roi_map.device != input.device:
            raise ValueError(f"roi_map is on {roi_map.device} but input is on {input.device}")
        if not roi_map.is_floating_point():
            raise TypeError(f"roi_map must be floating point, got {roi_map.dtype}")
        roi_map = roi_map.to(input.dtype)
    if k > 0 and (input.shape[2] == 0 or input.shape[3] == 0):
        raise ValueError(f"input has an empty spatial size {tuple(input.shape[2:])} but {k} boxes")
    if k > 0 and not values_unreadable(input, rois):
        _check_roi_values(rois, input.shape[0], (ph, pw), spatial_scale, sampling_ratio, aligned)
    return rois, (ph, pw), roi_map


def _check_roi_values(rois: Tensor, batch: int, size: tuple[int, int], scale: float, sampling_ratio: int,
                      aligned: bool) -> None:
    """Data checks; one host sync for all of them together."""
    b = rois[:, 0]
    coords = rois[:, 1:].double() * scale
    finite = torch.isfinite(rois).all(dim=1)
    index_ok = (b == b.floor()) & (b >= 0) & (b < batch)
    if sampling_ratio > 0:
        samples = torch.full_like(b, float(sampling_ratio**2 * size[0] * size[1]), dtype=torch.float64)
        grid = torch.full_like(b, float(sampling_ratio), dtype=torch.float64)[:, None]
        size_ok = samples <= MAX_SAMPLES_PER_ROI
    else:
        # The kernels' extent: an inverted box is 1 px wide unless aligned, where it pools nothing.
        ext = (coords[:, 2:] - coords[:, :2]).clamp(min=0.0 if aligned else 1.0)
        grid = torch.stack([torch.ceil(ext[:, 1] / size[0]), torch.ceil(ext[:, 0] / size[1])], dim=1)
        samples = grid.prod(dim=1) * (size[0] * size[1])
        # Beyond MAX_GRID_PER_AXIS on one axis the kernels would clamp the grid (another average than the reference).
        size_ok = (torch.nan_to_num(samples, nan=0.0) <= MAX_SAMPLES_PER_ROI) & \
            (torch.nan_to_num(grid, nan=0.0) <= MAX_GRID_PER_AXIS).all(dim=1)
    flags = torch.stack([finite.all(), index_ok.all(), size_ok.all()]).tolist()
    if not flags[0]:
        bad = int((~finite).nonzero()[0, 0])
        raise ValueError(f"boxes contain NaN or inf (first at row {bad}: {rois[bad].tolist()})")
    if not flags[1]:
        bad = int((~index_ok).nonzero()[0, 0])
        raise ValueError(
            f"box {bad} has batch index {float(b[bad])}; batch indices must be integers in [0, {batch})"
        )
    if not flags[2]:
        bad = int((~size_ok).nonzero()[0, 0])
        remedy = ("lower sampling_ratio or output_size" if sampling_ratio > 0
                  else "clip boxes to the image or pass sampling_ratio > 0")
        raise ValueError(
            f"box {bad} ({rois[bad, 1:].tolist()}) needs {float(samples[bad]):.3g} bilinear samples per channel, "
            f"{float(grid[bad].max()):.3g} per bin side (limits {MAX_SAMPLES_PER_ROI} and {MAX_GRID_PER_AXIS}); {remedy}"
        )


@fx_leaf
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    roi_map: Tensor | None = None,
    map_weight: str = "none",
) -> Tensor:
    """Average-pool ``output_size`` bins of bilinear samples from ``input`` inside each box (Mask R-CNN's RoIAlign).

    Args:
        input: Tensor[N, C, H, W] float16, bfloat16, float32 or float64.
        boxes: Tensor[K, 5] rows (batch index, x1, y1, x2, y2), or a list of N' <= N Tensor[L_i, 4] (one per image).
        output_size: int or (Ho, Wo).
        spatial_scale: box coordinates times this give feature-map pixels (1 / stride).
        sampling_ratio: bilinear samples per bin along each axis; <= 0 means ceil(box size / output size) per box.
        aligned: if True, pixel centres sit at half-integers (shift boxes by -0.5 px) - what detectron2 uses.
        roi_map: Tensor[K, Ho, Wo] added to every channel of the output in the same pass (differentiable).
        map_weight: "none" (``roi_map`` as is), "feature_std" or "feature_range": ``roi_map`` times a weight read off
            each RoI's own pooled features as they are written (:func:`opmask_fast.ops.reference.map_gain`:
            std(pooled) / std(map), or max(pooled) - min(pooled)); the weight is a constant of the backward.

    Returns:
        Tensor[K, C, Ho, Wo] in the dtype of ``input``.

    Raises:
        ValueError / TypeError on wrong shapes, dtypes or devices, NaN/inf boxes, batch indices outside the input,
        or a box whose sampling grid (adaptive, or sampling_ratio^2 x Ho x Wo) exceeds ``MAX_SAMPLES_PER_ROI``.
    """
    weight = map_weight_code(map_weight, roi_map)
    rois, (ph, pw), roi_map = check_roi_align_inputs(input, boxes, output_size, spatial_scale, sampling_ratio, roi_map,
                                                      aligned)
    if _extension.compiled("roi_align", input.device):
        if weight:
            return torch.ops.opmask_fast.roi_align_weighted(
                input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned), roi_map, weight
            )[0]
        return torch.ops.opmask_fast.roi_align(
            input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned), roi_map
        )
    return reference.roi_align(
        input, rois, (ph, pw), float(spatial_scale), int(sampling_ratio), bool(aligned), roi_map=roi_map,
        map_weight=map_weight,
    )


def map_weight_code(map_weight: str, roi_map: Tensor | None) -> int:
    """The kernels' code of ``map_weight`` (its index in ``reference.MAP_WEIGHTS``); a weight needs a map."""
    if map_weight not in reference.MAP_WEIGHTS:
        raise ValueError(f"map_weight must be one of {', '.join(reference.MAP_WEIGHTS)}, got {map_weight!r}")
    if map_weight != "none" and roi_map is None:
        raise ValueError(f"map_weight={map_weight!r} weights roi_map, but no roi_map was given")
    return reference.MAP_WEIGHTS.index(map_weight)


def _register() -> None:
    """Fake kernels and autograd for the compiled ops (needs ``_C`` loaded: the op schemas live there)."""
    lib = "opmask_fast::"

    @torch.library.register_fake(lib + "roi_align")
    def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, roi_map=None):
        torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be a Tensor[K, 5]")
        return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))

    @torch.library.register_fake(lib + "roi_align_backward")
    def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
          sampling_ratio, aligned):
        return grad.new_empty((batch_size, channels, height, width))

    def save(ctx, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, *saved):
        ctx.save_for_backward(rois, *saved)
        ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        ctx.input_shape = tuple(input.shape)

    def input_grad(ctx, grad, rois):
        if not ctx.needs_input_grad[0]:
            return None
        spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.input_shape
        return torch.ops.opmask_fast.roi_align_backward(grad, rois, spatial_scale, ph, pw, n, c, h, w,
                                                        sampling_ratio, aligned)

    def setup_context(ctx, inputs, output):
        save(ctx, *inputs[:7])

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grad_map = None
        # needs_input_grad omits a trailing roi_map left at its default.
        if len(ctx.needs_input_grad) > 7 and ctx.needs_input_grad[7]:
            grad_map = grad.sum(dim=1)  # roi_map is added to every channel: its gradient is the channel sum
        grads = (input_grad(ctx, grad, rois), None, None, None, None, None, None, grad_map)
        return grads[: len(ctx.needs_input_grad)]

    torch.library.register_autograd(lib + "roi_align", backward, setup_context=setup_context)

    @torch.library.register_fake(lib + "roi_align_weighted")
    def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, roi_map, map_weight):
        torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be a Tensor[K, 5]")
        out = input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))
        wide = torch.promote_types(input.dtype, torch.float32)
        return out, input.new_empty((rois.shape[0],), dtype=wide)

    def setup_context_weighted(ctx, inputs, output):
        save(ctx, *inputs[:7], output[1])
        ctx.mark_non_differentiable(output[1])

    def backward_weighted(ctx, grad, _grad_weights):
        rois, weights = ctx.saved_tensors
        grad_map = None
        if ctx.needs_input_grad[7]:  # the weight is a constant: weight x the channel sum
            grad_map = (grad.sum(dim=1) * weights[:, None, None]).to(grad.dtype)
        return input_grad(ctx, grad, rois), None, None, None, None, None, None, grad_map, None

    torch.library.register_autograd(lib + "roi_align_weighted", backward_weighted,
                                    setup_context=setup_context_weighted)

    # roi_align_backward is linear in grad; its adjoint is the forward pooling, which gives double backward.
    def setup_context_bwd(ctx, inputs, output):
        grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)

    def backward_bwd(ctx, grad_grad_input):
        (rois,) = ctx.saved_tensors
        spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
        gg = torch.ops.opmask_fast.roi_align(
            grad_grad_input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, None
        )
        return (gg,) + (None,) * 10

    torch.library.register_autograd(lib + "roi_align_backward", backward_bwd, setup_context=setup_context_bwd)


if _extension.has_C():
    _register()
