"""Feature pyramid network over res2..res5, producing P2..P6 (P6 by stride-2 subsampling of P5, as detectron2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import get_norm
from .resnet import ResNet


class FPN(nn.Module):
    """ResNet + FPN.

    Args:
        bottom_up: the ResNet trunk.
        out_channels: width of every pyramid level.
        norm: norm after the lateral and output convs ("" for none, the default).

    forward: `Tensor[N, 3, H, W]` (H, W multiples of 32) -> `[P2 Tensor[N, C, H/4, W/4], ..., P6 Tensor[N, C, H/64, W/64]]`.
    """

    strides = (4, 8, 16, 32, 64)

    def __init__(self, *, bottom_up: ResNet, out_channels: int = 256, norm: str = ""):
        super().__init__()
        self.bottom_up = bottom_up
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for cin in bottom_up.out_channels:
            lat = nn.Sequential(nn.Conv2d(cin, out_channels, 1, bias=norm == ""), get_norm(norm, out_channels))
            out = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == ""),
                                get_norm(norm, out_channels))
            for conv in (lat[0], out[0]):
                # detectron2's c2_xavier_fill: uniform Kaiming with a=1, zero bias.
                nn.init.kaiming_uniform_(conv.weight, a=1)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            self.lateral_convs.append(lat)
            self.output_convs.append(out)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.bottom_up(x)
        prev = self.lateral_convs[-1](feats[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(feats) - 2, -1, -1):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.lateral_convs[i](feats[i]) + top_down
            outs.insert(0, self.output_convs[i](prev))
        # P6: every second row and column of P5, which is max_pool2d(kernel_size=1, stride=2) (detectron2's
        # LastLevelMaxPool) written as a slice: torch 2.11's export guards on P5's size parity in that pooling's
        # output size and so refuses a dynamic image size; the slice has no such guard.
        outs.append(outs[-1][:, :, ::2, ::2])
        return outs
