"""Multi-level RoIAlign: the FPN pooler as one op, each RoI pooled from the pyramid level ``levels`` names.

One launch for all levels (CPU and CUDA kernels in csrc/), where the plain pooler runs one RoIAlign per level over
that level's RoIs, found with ``nonzero`` (a host sync per level on a GPU, and a shape that depends on the data).
The op's output shape is known from its inputs' shapes, so torch.export and torch.compile(fullgraph=True) trace
through it. Forward only: the inference path runs it with autograd off; training pools through
:func:`opmask_fast.ops.roi_align` per level. Without ``opmask_fast._C`` the same op is a Python custom op around the
float64-exact reference (``ops/reference/multi_level_roi_align.py``).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from opmask_fast import _extension
from opmask_fast.ops import reference
from opmask_fast.ops.roi_align import _pair, check_roi_align_inputs, map_weight_code
from opmask_fast.ops._tracing import fx_leaf, values_unreadable

__all__ = ["multi_level_roi_align", "check_levels"]

MAX_LEVELS = 8  # csrc/roi_align_checks.h kMaxLevels


@fx_leaf
def multi_level_roi_align(features: list[Tensor], rois: Tensor, levels: Tensor, output_size: int | tuple[int, int],
                          spatial_scales: list[float], sampling_ratio: int = 0, aligned: bool = True, *,
                          roi_map: Tensor | None = None, map_weight: str = "none", validate: bool = True) -> Tensor:
    """RoIAlign of RoI k on ``features[levels[k]]`` with ``spatial_scales[levels[k]]``, all levels in one launch.

    Args:
        features: L <= 8 Tensor[N, C, H_l, W_l] (one dtype and device).
        rois: Tensor[K, 5] (batch index, x1, y1, x2, y2) in image coordinates.
        levels: int64 Tensor[K] with values in [0, L) (see :func:`opmask_fast.ops.multi_scale_roi_align.assign_levels`).
        output_size: int or (Ho, Wo); sampling_ratio, aligned: as in :func:`opmask_fast.ops.roi_align`.
        roi_map: Tensor[K, Ho, Wo] added to every channel of the output.
        map_weight: how ``roi_map`` is weighted per RoI, as in :func:`opmask_fast.ops.roi_align`.
        validate: check the values of ``rois`` and ``levels`` (one host sync). The model passes False: its boxes are
            clipped to the image and its levels clamped, and a level out of range still stops the kernel (CPU: an
            error; CUDA: a device-side assert).

    Returns:
        Tensor[K, C, Ho, Wo] in the features' dtype.
    """
    check_levels(features, spatial_scales)
    first = features[0]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [*features, roi_map]):
        raise ValueError("multi_level_roi_align has no backward (the inference pooler): call it under "
                         "torch.no_grad(), or pool each level with opmask_fast.ops.roi_align to train")
    if not isinstance(levels, Tensor) or levels.dim() != 1 or levels.dtype != torch.int64 \
            or levels.device != first.device:
        raise ValueError(f"levels must be an int64 Tensor[K] on {first.device}, got {getattr(levels, 'shape', levels)}")
    weight = map_weight_code(map_weight, roi_map)
    if validate:
        # The finest level has the largest scale: its sample count bounds every level's.
        scale = max(spatial_scales)
        rois, (ph, pw), roi_map = check_roi_align_inputs(first, rois, output_size, scale, sampling_ratio, roi_map,
                                                          aligned)
        if levels.shape[0] != rois.shape[0]:
            raise ValueError(f"levels has {levels.shape[0]} entries for {rois.shape[0]} boxes")
        # A data check (a host read), skipped where it cannot run (traced, meta), as roi_align's box checks are.
        in_range = (levels >= 0) & (levels < len(features))
        if rois.shape[0] > 0 and not values_unreadable(rois, levels) and not bool(in_range.all()):
            bad = int((~in_range).nonzero()[0, 0])
            raise ValueError(f"box {bad} has level {int(levels[bad])}; levels must be in [0, {len(features)})")
        empty = [i for i, f in enumerate(features) if f.shape[2] == 0 or f.shape[3] == 0]
        if rois.shape[0] > 0 and empty:  # as roi_align refuses it (unvalidated, the kernels pool zeros there)
            raise ValueError(f"features[{empty[0]}] has an empty spatial size {tuple(features[empty[0]].shape[2:])} "
                             f"but {rois.shape[0]} boxes")
    else:
        ph, pw = _pair(output_size)
        rois = rois.to(torch.promote_types(first.dtype, torch.float32))
        roi_map = roi_map.to(first.dtype) if roi_map is not None else None
    _extension.compiled("multi_level_roi_align", first.device)  # without _C the op is the reference, registered below
    return torch.ops.opmask_fast.multi_level_roi_align(list(features), rois, levels, [float(s) for s in spatial_scales],
                                                      ph, pw, int(sampling_ratio), bool(aligned), roi_map, weight)


def check_levels(features: list[Tensor], spatial_scales: list[float]) -> None:
    """The pyramid's structure: 1 to 8 levels of Tensor[N, C, H_l, W_l] (one N, C, dtype and device), each with a
    positive finite scale. No data read."""
    if not isinstance(features, (list, tuple)) or not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError(f"features must be a list of 1 to {MAX_LEVELS} Tensor[N, C, H, W]")
    if len(spatial_scales) != len(features):
        raise ValueError(f"{len(features)} feature levels but {len(spatial_scales)} spatial scales")
    first = features[0]
    for i, f in enumerate(features):
        if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[:2] != first.shape[:2] or f.dtype != first.dtype \
                or f.device != first.device:
            raise ValueError(f"features[{i}] must be a Tensor[{first.shape[0]}, {first.shape[1]}, H, W] of "
                             f"{first.dtype} on {first.device}, got {getattr(f, 'shape', type(f))}")
    for i, s in enumerate(spatial_scales):
        if not isinstance(s, numbers.Real) or isinstance(s, bool) or not 0 < s < math.inf:  # not isfinite: Dynamo
            raise ValueError(f"spatial_scales[{i}] must be a positive finite float, got {s!r}")


def _fake(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned, roi_map=None,
          map_weight=0):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


def _no_backward(ctx, grad):
    raise RuntimeError("opmask_fast::multi_level_roi_align has no backward (the inference pooler): pool each level "
                       "with opmask_fast.ops.roi_align to train")


if _extension.has_C():
    torch.library.register_fake("opmask_fast::multi_level_roi_align")(_fake)
else:
    @torch.library.custom_op("opmask_fast::multi_level_roi_align", mutates_args=())
    def _fallback(features: list[Tensor], rois: Tensor, levels: Tensor, spatial_scales: list[float],
                  pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool,
                  roi_map: Optional[Tensor] = None, map_weight: int = 0) -> Tensor:
        with torch.no_grad():
            return reference.multi_level_roi_align(features, rois, levels, (pooled_height, pooled_width),
                                                   spatial_scales, sampling_ratio, aligned, roi_map,
                                                   reference.MAP_WEIGHTS[map_weight])

    _fallback.register_fake(_fake)


# A direct call of the op on inputs that need gradients gets an error at backward, not a silently missing gradient.
torch.library.register_autograd("opmask_fast::multi_level_roi_align", _no_backward,
                                setup_context=lambda ctx, inputs, output: None)
