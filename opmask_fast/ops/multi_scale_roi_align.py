"""Multi-scale RoIAlign: the FPN pooler (each box pooled from the pyramid level that matches its size), differentiable
with one RoIAlign per level, or for inference as one multi-level launch (`static=True`)."""

from __future__ import annotations

import math
import torch
from torch import Tensor

from opmask_fast.ops.multi_level_roi_align import check_levels, multi_level_roi_align
from opmask_fast.ops.roi_align import _pair, convert_boxes_to_roi_format, roi_align
from opmask_fast.ops._tracing import fx_leaf

__all__ = ["multi_scale_roi_align", "assign_levels"]


class _ZeroGradTo(torch.autograd.Function):
    """Identity on ``out`` that also takes ``unused`` tensors into the graph with a zero gradient.

    A pyramid level without boxes contributes nothing to the pooled output, but it must still be part of the graph (as
    in torchvision's MultiScaleRoIAlign): ``torch.autograd.grad`` with respect to it gives zeros instead of raising.
    The zero gradient is an expanded 0-dim tensor, so neither pass reads or writes the level's feature map.
    """

    @staticmethod
    def forward(ctx, out: Tensor, *unused: Tensor) -> Tensor:
        ctx.specs = [(t.shape, t.dtype, t.device) for t in unused]
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        zeros = [torch.zeros((), dtype=dtype, device=device).expand(shape) for shape, dtype, device in ctx.specs]
        return (grad, *zeros)


def assign_levels(
    boxes: Tensor, *, min_level: int, max_level: int, canonical_level: int = 4, canonical_scale: int = 224
) -> Tensor:
    """Pyramid level of each box (FPN paper, eq. 1): floor(canonical_level + log2(sqrt(area) / canonical_scale)).

    Args:
        boxes: Tensor[K, 4] (x1, y1, x2, y2) in image coordinates.
        min_level, max_level: the available levels (2..5 for P2-P5); results are clamped to them.

    Returns:
        Tensor[K] int64 level index relative to ``min_level`` (0 .. max_level - min_level).
    """
    # float32 at least (a float16 area overflows past 65504, a bfloat16 one keeps 8 bits), float64 boxes in float64:
    # torchvision's LevelMapper computes in float32 or the boxes' wider dtype, so a box within float32's rounding of a
    # level boundary gets its level. Converted before the products, not after.
    b = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    size = torch.sqrt(area.clamp(min=0))
    # The 1e-6 keeps a box exactly on a level boundary on the upper level, as torchvision's LevelMapper does.
    level = torch.floor(canonical_level + torch.log2(size / canonical_scale) + 1e-6)
    level = torch.nan_to_num(level, nan=float(min_level), neginf=float(min_level))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


@fx_leaf
def multi_scale_roi_align(
    features: list[Tensor],
    boxes: list[Tensor],
    output_size: int | tuple[int, int],
    *,
    spatial_scales: list[float],
    sampling_ratio: int = 0,
    aligned: bool = True,
    canonical_level: int = 4,
    canonical_scale: int = 224,
    roi_map: Tensor | None = None,
    map_weight: str = "none",
    static: bool = False,
) -> Tensor:
    """RoIAlign each box on its FPN level; results in the input box order.

    Args:
        features: list of L Tensor[N, C, H_l, W_l], finest first (P2, P3, ...).
        boxes: list of N Tensor[L_i, 4] (x1, y1, x2, y2) in image coordinates, one per image.
        output_size: int or (Ho, Wo).
        spatial_scales: L floats, 1 / stride of each level (powers of two: 1/4, 1/8, ...).
        sampling_ratio, aligned: as in :func:`opmask_fast.ops.roi_align` (detectron2: 0 and True).
        canonical_level, canonical_scale: a box of sqrt(area) = canonical_scale goes to level canonical_level.
        roi_map: Tensor[sum L_i, Ho, Wo] added to every channel of the output.
        map_weight: how ``roi_map`` is weighted per RoI, as in :func:`opmask_fast.ops.roi_align` (the weight reads
            the RoI's own pooled features, whatever its level).
        static: levels assigned on the device and all levels pooled in one launch of
            :func:`opmask_fast.ops.multi_level_roi_align` (inference only, no autograd): no per-level selection, so no
            host sync, and an output shape known without looking at the boxes (torch.export and
            torch.compile(fullgraph=True) trace through it). The boxes' values are not checked (the model's are
            clipped to the image).

    Returns:
        Tensor[sum L_i, C, Ho, Wo].
    """
    if len(features) == 0 or len(features) != len(spatial_scales):
        raise ValueError(f"need one spatial scale per feature level, got {len(features)} levels and "
                         f"{len(spatial_scales)} scales")
    check_levels(features, spatial_scales)
    levels = [-math.log2(s) for s in spatial_scales]
    if any(abs(lv - round(lv)) > 1e-6 for lv in levels) or any(
        round(b) - round(a) != 1 for a, b in zip(levels, levels[1:])
    ):
        raise ValueError(f"spatial_scales must be consecutive powers of 1/2 (finest first), got {spatial_scales}")
    rois = convert_boxes_to_roi_format(list(boxes))  # (K, 5); validation happens in roi_align
    ho, wo = _pair(output_size)
    if static:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [*features, roi_map]):
            raise ValueError("static=True pools without autograd (inference); call it under torch.no_grad() or "
                             "use static=False to train")
        level = assign_levels(rois[:, 1:], min_level=round(levels[0]), max_level=round(levels[-1]),
                              canonical_level=canonical_level, canonical_scale=canonical_scale)
        return multi_level_roi_align(list(features), rois, level, (ho, wo), list(spatial_scales), sampling_ratio,
                                     aligned, roi_map=roi_map, map_weight=map_weight, validate=False)
    return _pool(features, rois, (ho, wo), spatial_scales, sampling_ratio, aligned, canonical_level, canonical_scale,
                 roi_map, map_weight)


def _pool(features: list[Tensor], rois: Tensor, output_size: tuple[int, int], spatial_scales: list[float],
          sampling_ratio: int, aligned: bool, canonical_level: int, canonical_scale: int,
          roi_map: Tensor | None, map_weight: str) -> Tensor:
    levels = [-math.log2(s) for s in spatial_scales]
    min_level, max_level = round(levels[0]), round(levels[-1])
    ho, wo = output_size
    first = features[0]
    if len(features) == 1:
        return roi_align(first, rois, (ho, wo), spatial_scales[0], sampling_ratio, aligned, roi_map=roi_map,
                         map_weight=map_weight)
    level = assign_levels(rois[:, 1:], min_level=min_level, max_level=max_level,
                          canonical_level=canonical_level, canonical_scale=canonical_scale)
    out = first.new_zeros((rois.shape[0], first.shape[1], ho, wo))
    # One pooling call per level over that level's boxes, scattered back to input order (index_put is
    # differentiable). Levels without boxes are skipped and joined to the graph with a zero gradient.
    unused = []
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(level == lvl).squeeze(1)
        if idx.numel() == 0:
            unused.append(feat)
            continue
        part_map = roi_map[idx] if roi_map is not None else None
        pooled = roi_align(feat, rois[idx], (ho, wo), scale, sampling_ratio, aligned, roi_map=part_map,
                           map_weight=map_weight)
        out = out.index_put((idx,), pooled)
    if rois.shape[0] == 0 and roi_map is not None:
        unused.append(roi_map)
    unused = [t for t in unused if t.requires_grad]
    if unused and torch.is_grad_enabled():
        out = _ZeroGradTo.apply(out, *unused)
    return out
