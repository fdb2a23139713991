"""Add a per-RoI weighted map to RoI features: ``features[r] + w_r * roi_map[r]`` on every channel.

The weight is read off each RoI's own features, as :func:`opmask_fast.ops.roi_align` reads it off its output with
``map_weight`` (``reference.map_gain``: std(features) / std(map), or max - min of the features). This op is that
second half alone, for features pooled before the map exists: the prior at the mask head's resolution is the CAM of
the pooled features themselves, so the model pools once, computes the prior and adds it here, in one pass over the
features (per RoI the statistics, then the add that writes the output, the RoI's features still in cache), where a
second weighted pooling would sample the feature map again. ``add_weighted_map(roi_align(x, b, ...), m, w)`` equals
``roi_align(x, b, ..., roi_map=m, map_weight=w)`` bit for bit: the kernels share the helper
(csrc/cpu/roi_align_taps.h, csrc/cuda/roi_align_device.cuh). One exception: with ``map_weight="none"`` in float16 /
bfloat16, ``roi_align`` adds the map before its one rounding, so the two may differ by one unit in the last place.

The weight is a constant of the backward, as in RoIAlign: the features' gradient is the output's, the map's is
weight x the output gradient's channel sum. Compiled kernels (CPU, CUDA) through ``torch.ops.opmask_fast``; without
``opmask_fast._C`` the same op is a Python custom op around the plain PyTorch reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opmask_fast import _extension
from opmask_fast.ops import reference
from opmask_fast.ops._tracing import fx_leaf
from opmask_fast.ops.roi_align import map_weight_code

__all__ = ["add_weighted_map"]


@fx_leaf
def add_weighted_map(features: Tensor, roi_map: Tensor, map_weight: str = "feature_std") -> Tensor:
    """``features + w * roi_map`` broadcast over the channels, ``w`` per RoI read off the RoI's own features.

    Args:
        features: Tensor[K, C, H, W] float16, bfloat16, float32 or float64.
        roi_map: Tensor[K, H, W] on the same device (converted to the features' dtype).
        map_weight: "feature_std", "feature_range" or "none" (w = 1), as in :func:`opmask_fast.ops.roi_align`.

    Returns:
        Tensor[K, C, H, W] in the features' dtype, contiguous; differentiable in ``features`` and ``roi_map``.
    """
    code = map_weight_code(map_weight, roi_map)
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        raise ValueError(f"features must be a floating Tensor[K, C, H, W], got {getattr(features, 'shape', features)}")
    k, _, h, w = features.shape
    if not isinstance(roi_map, Tensor) or tuple(roi_map.shape) != (k, h, w) or not roi_map.is_floating_point():
        raise ValueError(f"roi_map must be a floating Tensor[{k}, {h}, {w}] matching the features, "
                         f"got {getattr(roi_map, 'shape', roi_map)}")
    if roi_map.device != features.device:
        raise ValueError(f"roi_map is on {roi_map.device}, the features on {features.device}")
    _extension.compiled("add_weighted_map", features.device)  # without _C the op is the reference, registered below
    return torch.ops.opmask_fast.add_weighted_map(features, roi_map.to(features.dtype), code)[0]


def _fake(features, roi_map, map_weight):
    wide = torch.promote_types(features.dtype, torch.float32)
    return features.new_empty(features.shape), features.new_empty((features.shape[0],), dtype=wide)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad, _grad_weights):
    (weights,) = ctx.saved_tensors
    grad_map = None
    if ctx.needs_input_grad[1]:  # the weight is a constant: weight x the channel sum
        grad_map = (grad.sum(dim=1) * weights[:, None, None]).to(grad.dtype)
    return grad if ctx.needs_input_grad[0] else None, grad_map, None


if _extension.has_C():
    torch.library.register_fake("opmask_fast::add_weighted_map")(_fake)
    torch.library.register_autograd("opmask_fast::add_weighted_map", _backward, setup_context=_setup_context)
else:
    @torch.library.custom_op("opmask_fast::add_weighted_map", mutates_args=())
    def _fallback(features: Tensor, roi_map: Tensor, map_weight: int) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return reference.add_weighted_map(features, roi_map, reference.MAP_WEIGHTS[map_weight])

    _fallback.register_fake(_fake)
    _fallback.register_autograd(_backward, setup_context=_setup_context)
