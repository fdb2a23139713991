"""Pure-PyTorch multi-level RoIAlign: the test oracle and the fallback when ``opmask_fast._C`` is missing.

Each RoI is pooled by the reference RoIAlign on the level ``levels`` names. The per-level selection (``nonzero``)
depends on the data; the fallback op hides it inside an opaque custom op, so tracing still sees fixed shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .roi_align import roi_align


def multi_level_roi_align(features: list[Tensor], rois: Tensor, levels: Tensor, output_size: tuple[int, int],
                          spatial_scales: list[float], sampling_ratio: int, aligned: bool,
                          roi_map: Tensor | None = None, map_weight: str = "none") -> Tensor:
    """Tensor[K, C, Ho, Wo]: RoI k pooled from ``features[levels[k]]`` with ``spatial_scales[levels[k]]``.

    Args:
        features: L Tensor[N, C, H_l, W_l]; rois: Tensor[K, 5]; levels: int64 Tensor[K] in [0, L).
        roi_map: Tensor[K, Ho, Wo] added to every channel, weighted per RoI as ``map_weight`` says (``MAP_WEIGHTS``).
    """
    bad = ((levels < 0) | (levels >= len(features))).nonzero()
    if bad.numel() > 0:  # as the kernels refuse it (a RoI of no level would silently read zeros)
        k = int(bad[0, 0])
        raise RuntimeError(f"opmask_fast::multi_level_roi_align: RoI {k} has level {int(levels[k])} outside "
                           f"[0, {len(features)})")
    first = features[0]
    out = first.new_zeros((rois.shape[0], first.shape[1], *output_size))
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel() > 0:
            part_map = roi_map[idx] if roi_map is not None else None
            out[idx] = roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned, roi_map=part_map,
                                 map_weight=map_weight)
    return out
