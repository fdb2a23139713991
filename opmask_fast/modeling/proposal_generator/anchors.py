"""Anchors over the FPN levels (detectron2's DefaultAnchorGenerator, offset 0)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from opmask_fast.ops._tracing import values_unreadable


def cell_anchors(size: float, ratios: tuple[float, ...]) -> Tensor:
    """Anchors of one size centred on (0, 0): `Tensor[len(ratios), 4]` xyxy, area size^2, height / width = ratio."""
    out = []
    for r in ratios:
        w = math.sqrt(size * size / r)
        h = r * w
        out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """One anchor size per level with several ratios, placed at every feature-map location (top-left offset 0).

    Args:
        sizes: anchor size per level (e.g. 32..512 on P2..P6).
        ratios: height / width ratios.
        strides: feature stride per level.

    forward: list of L feature maps `Tensor[N, C, H_l, W_l]` -> list of L `Tensor[H_l * W_l * A, 4]`, ordered location-major,
    ratio-minor (the order of the RPN head's outputs after reshaping).
    """

    def __init__(self, *, sizes: tuple[float, ...], ratios: tuple[float, ...], strides: tuple[int, ...]):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per level: {len(sizes)} sizes for {len(strides)} levels")
        self.strides = tuple(strides)
        self.num_anchors = len(ratios)
        for i, s in enumerate(sizes):
            self.register_buffer(f"cell{i}", cell_anchors(s, tuple(ratios)), persistent=False)
        self._cache: dict[tuple, list[Tensor]] = {}

    def grid_anchors(self, shapes: list[tuple[int, int]], device: torch.device, *, cache: bool) -> list[Tensor]:
        """Anchors of each level's (H_l, W_l), kept per sizes and device with ``cache`` (for real tensors: traced,
        the sizes may be symbolic and the anchors fake)."""
        key = (tuple(shapes), str(device)) if cache else None
        if key in self._cache:
            return self._cache[key]
        out = []
        for i, ((h, w), stride) in enumerate(zip(shapes, self.strides)):
            cell = getattr(self, f"cell{i}").to(device)
            xs = torch.arange(w, device=device, dtype=torch.float32) * stride
            ys = torch.arange(h, device=device, dtype=torch.float32) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell[None]).reshape(-1, 4))
        if not cache:
            return out
        if len(self._cache) > 16:  # image sizes vary with multi-scale training: keep the cache small
            self._cache.clear()
        self._cache[key] = out
        return out

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        # Traced (torch.compile / export), or fake or meta features (shape propagation): nothing cached, as fake
        # anchors would reach a later real call.
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features], features[0].device,
                                 cache=not values_unreadable(features[0]))
