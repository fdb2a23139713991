"""Pure-PyTorch RoIAlign: the test oracle and the fallback when ``opmask_fast._C`` is missing.

Vectorised over RoIs, bins and samples (no Python loop over boxes) and differentiable by autograd with respect to
``input`` and ``roi_map``. Every bilinear sample of a bin becomes four (pixel, weight) pairs; one
``embedding_bag`` over the channels-last input sums them, so memory grows with the number of samples, never with
RoIs x channels x samples. Semantics are torchvision's (``aligned`` half-pixel shift, adaptive sampling when
``sampling_ratio <= 0``, samples beyond one pixel outside the map read zero). As in torchvision and the compiled op,
the boxes get no gradient, and the backward is differentiable again (double backward), see :class:`_Pool`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# How a map added to RoIAlign's output is weighted per RoI (csrc/map_weight.h holds the same maths): as is, by
# std(pooled) / std(map), or by max(pooled) - min(pooled), each read off that RoI's own pooled features.
MAP_WEIGHTS = ("none", "feature_std", "feature_range")


def map_gain(features: Tensor, roi_map: Tensor, map_weight: str) -> Tensor:
    """The weight of ``roi_map Tensor[K, Ho, Wo]`` for each RoI of ``features Tensor[K, C, Ho, Wo]``, Tensor[K] in
    float32 (float64 for float64), detached; 0 where it is not finite (NaN features, a one-value map, no channels).

    "feature_std" is the ratio of sample standard deviations over all of the RoI's values (the map's clamped at
    1e-6), "feature_range" is max - min of the features, "none" is 1.
    """
    if map_weight not in MAP_WEIGHTS:
        raise ValueError(f"map_weight must be one of {', '.join(MAP_WEIGHTS)}, got {map_weight!r}")
    wide = torch.promote_types(features.dtype, torch.float32)  # statistics of half-precision maps in float32
    f = features.detach().to(wide).flatten(1)
    if map_weight == "none":
        return torch.ones(f.shape[0], dtype=wide, device=f.device)
    if f.shape[1] == 0 or (map_weight == "feature_std" and min(f.shape[1], roi_map.flatten(1).shape[1]) < 2):
        return torch.zeros(f.shape[0], dtype=wide, device=f.device)  # no statistic (a one-value std is NaN): 0
    if map_weight == "feature_std":
        gain = f.std(dim=1) / roi_map.detach().to(wide).flatten(1).std(dim=1).clamp(min=1e-6)
    else:
        gain = f.amax(dim=1) - f.amin(dim=1)
    return torch.nan_to_num(gain, nan=0.0, posinf=0.0)


def add_weighted_map(features: Tensor, roi_map: Tensor, map_weight: str) -> tuple[Tensor, Tensor]:
    """``features Tensor[K, C, H, W]`` + ``map_gain`` x ``roi_map Tensor[K, H, W]`` on every channel, summed in the
    gain's dtype and rounded once, and the gains ``Tensor[K]``: what RoIAlign's ``map_weight`` adds to its output."""
    gain = map_gain(features, roi_map, map_weight)
    out = features.to(gain.dtype) + gain[:, None, None, None] * roi_map.to(gain.dtype)[:, None]
    return out.to(features.dtype).contiguous(), gain


def _axis_samples(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int):
    """Bilinear taps along one axis.

    Args:
        start: Tensor[K] first coordinate of each RoI in feature pixels.
        bin_size: Tensor[K] bin extent along this axis.
        grid: Tensor[K] int64 samples per bin along this axis.
        pooled: number of output bins along this axis.
        size: feature-map extent along this axis.

    Returns:
        (low, high, w_low, w_high, valid), each Tensor[K, pooled, G] with G = max(grid); ``valid`` is false for
        padding samples (index >= grid) and for samples more than one pixel outside the map.
    """
    g_max = max(int(grid.max()), 1) if grid.numel() else 1
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(g_max, device=start.device, dtype=start.dtype)[None, None, :]
    s, b, g = start[:, None, None], bin_size[:, None, None], grid[:, None, None].to(start.dtype)
    # Same evaluation order as the compiled kernels so float32 results agree to the last bits.
    coord = s + p * b + (i + 0.5) * b / g
    valid = (i < g) & (coord >= -1.0) & (coord <= size) & (size > 0)  # an empty axis has no pixel to read
    coord = coord.clamp(min=0.0)
    low = coord.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low, coord)
    frac = coord - low
    return low.long(), high.long(), 1.0 - frac, frac, valid


class _Pool(torch.autograd.Function):
    """``embedding_bag(index, table, weight)``: the pooling, a fixed sparse linear map P of ``table``.

    Its own autograd because aten's embedding_bag backward has no derivative (no double backward, which the compiled
    op has) and would send gradients to ``weight``, i.e. to the boxes (which neither torchvision nor the compiled op
    does). The backward P^T grad is :class:`_PoolAdjoint`, whose backward is this pooling again.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, weight = ctx.saved_tensors
        return _PoolAdjoint.apply(grad, index, weight, ctx.rows), None, None


class _PoolAdjoint(torch.autograd.Function):
    """P^T grad: every table row sums weight x grad over the (bag, sample) pairs that read it.

    One ``embedding_bag`` over ``grad`` with the pairs grouped by table row (a CSR form of P^T): memory grows with the
    samples, never with samples x channels, and the sums run in a fixed order (deterministic on any thread count).
    """

    @staticmethod
    def forward(ctx, grad: Tensor, index: Tensor, weight: Tensor, rows: int) -> Tensor:
        ctx.save_for_backward(index, weight)
        flat = index.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        bags = order // index.shape[1]  # the output row (bag) of each pair, grouped by the table row it reads
        counts = torch.bincount(flat, minlength=rows)
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(bags, grad.contiguous(), offsets, per_sample_weights=weight.reshape(-1)[order],
                               mode="sum")

    @staticmethod
    def backward(ctx, grad_grad: Tensor):
        index, weight = ctx.saved_tensors
        return _Pool.apply(grad_grad, index, weight), None, None, None


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    roi_map: Tensor | None = None,
    map_weight: str = "none",
) -> Tensor:
    """RoIAlign of ``input`` over ``rois``, optionally adding ``roi_map`` to every channel.

    Args:
        input: Tensor[N, C, H, W].
        rois: Tensor[K, 5] rows (batch index, x1, y1, x2, y2) in input-image coordinates.
        output_size: (Ho, Wo).
        spatial_scale: factor from box coordinates to feature pixels.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi_size / output_size) per RoI.
        aligned: shift box coordinates by -0.5 pixel (pixel centres at half-integers).
        roi_map: Tensor[K, Ho, Wo] added to every channel of the result.
        map_weight: one of ``MAP_WEIGHTS``: ``roi_map`` times :func:`map_gain` of the RoI's pooled features (rounded
            to the input's dtype first, as the kernels read them back).

    Returns:
        Tensor[K, C, Ho, Wo] in the dtype of ``input``.
    """
    ph, pw = output_size
    n, c, h, w = input.shape
    k = rois.shape[0]
    # Coordinates in float32 at least: float16 cannot place a sample inside a large feature map.
    cdtype = torch.promote_types(input.dtype, torch.float32)
    r = rois.to(cdtype)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale - offset - x1
    roi_h = r[:, 4] * spatial_scale - offset - y1
    if not aligned:  # the legacy convention forces at least a 1x1 RoI
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.long, device=r.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).long()
        grid_w = torch.ceil(roi_w / pw).long()
    count = (grid_h * grid_w).clamp(min=1).to(cdtype)

    ylo, yhi, wylo, wyhi, vy = _axis_samples(y1, bin_h, grid_h, ph, h)  # (K, ph, Gh)
    xlo, xhi, wxlo, wxhi, vx = _axis_samples(x1, bin_w, grid_w, pw, w)  # (K, pw, Gw)
    gh, gw = ylo.shape[2], xlo.shape[2]

    # Broadcast to (K, ph, pw, Gh, Gw, 4 corners): corner order (ylo,xlo) (ylo,xhi) (yhi,xlo) (yhi,xhi).
    def yb(t: Tensor) -> Tensor:
        return t[:, :, None, :, None]

    def xb(t: Tensor) -> Tensor:
        return t[:, None, :, None, :]

    rows = torch.stack(torch.broadcast_tensors(yb(ylo), yb(ylo), yb(yhi), yb(yhi)), dim=-1)
    cols = torch.stack(torch.broadcast_tensors(xb(xlo), xb(xhi), xb(xlo), xb(xhi)), dim=-1)
    wy = torch.stack(torch.broadcast_tensors(yb(wylo), yb(wylo), yb(wyhi), yb(wyhi)), dim=-1)
    wx = torch.stack(torch.broadcast_tensors(xb(wxlo), xb(wxhi), xb(wxlo), xb(wxhi)), dim=-1)
    valid = (yb(vy) & xb(vx)).unsqueeze(-1)
    weight = torch.where(valid, wy * wx, torch.zeros((), dtype=cdtype, device=r.device))
    weight = weight / count[:, None, None, None, None, None]

    batch = r[:, 0].long().clamp(0, max(n - 1, 0))[:, None, None, None, None, None]
    index = (batch * h + rows) * w + cols
    index = torch.where(valid, index, torch.zeros_like(index))  # invalid taps point at pixel 0 with weight 0

    table = input.permute(0, 2, 3, 1).reshape(n * h * w, c).to(cdtype)  # (N*H*W, C)
    if table.shape[0] == 0:  # empty batch (only legal with K == 0): give embedding_bag one zero row to index
        table = torch.cat([table, table.new_zeros(1, c)])
    if c == 0:  # embedding_bag rejects a zero-width table ("Expected i < index_size"): nothing to pool
        pooled = table.sum(0, keepdim=True).expand(k * ph * pw, 0)  # (K*ph*pw, 0), still in input's graph
    else:
        pooled = _Pool.apply(
            table, index.reshape(k * ph * pw, gh * gw * 4), weight.detach().reshape(k * ph * pw, gh * gw * 4)
        )  # (K*ph*pw, C)
    out = pooled.reshape(k, ph, pw, c).permute(0, 3, 1, 2)
    if roi_map is not None and map_weight != "none":
        out = out.to(input.dtype).to(cdtype)  # the statistics of the rounded output, as the kernels read it back
        m = roi_map.to(input.dtype).to(cdtype)
        out = out + m[:, None] * map_gain(out, m, map_weight).to(cdtype)[:, None, None, None]
    elif roi_map is not None:
        out = out + roi_map.to(cdtype)[:, None]
    return out.to(input.dtype).contiguous()
