"""ResNet-18/34/50/101 returning the res2..res5 feature maps (strides 4, 8, 16, 32).

Parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...) so a torchvision state
dict loads as is; `opmask_fast.modeling.weights` renames detectron2/MSRA pickles to these names.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import FrozenBatchNorm2d, get_norm

_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3))}


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """norm(conv(x)); a FrozenBatchNorm2d is folded into the conv's weight and bias instead, which removes its two
    elementwise passes over the activations (a fifth of a CPU forward of ResNet-50), and still trains the conv."""
    if isinstance(norm, FrozenBatchNorm2d):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        return F.conv2d(x, conv.weight * scale[:, None, None, None], shift, conv.stride, conv.padding)
    return norm(conv(x))


def _shortcut(block: nn.Module, x: Tensor) -> Tensor:
    return x if block.downsample is None else conv_norm(block.downsample[0], block.downsample[1], x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, *, in_channels: int, channels: int, stride: int, norm: str, stride_in_1x1: bool = False):
        super().__init__()
        out = channels * self.expansion
        self.conv1, self.bn1 = _conv(in_channels, channels, 3, stride), get_norm(norm, channels)
        self.conv2, self.bn2 = _conv(channels, channels, 3), get_norm(norm, channels)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv(in_channels, out, 1, stride), get_norm(norm, out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu_(conv_norm(self.conv1, self.bn1, x))
        y = conv_norm(self.conv2, self.bn2, y)
        return F.relu_(y + _shortcut(self, x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, *, in_channels: int, channels: int, stride: int, norm: str, stride_in_1x1: bool = True):
        super().__init__()
        out = channels * self.expansion
        # MSRA's original weights were trained with the stride in the 1x1 conv; torchvision's with it in the 3x3.
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = _conv(in_channels, channels, 1, s1), get_norm(norm, channels)
        self.conv2, self.bn2 = _conv(channels, channels, 3, s3), get_norm(norm, channels)
        self.conv3, self.bn3 = _conv(channels, out, 1), get_norm(norm, out)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv(in_channels, out, 1, stride), get_norm(norm, out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu_(conv_norm(self.conv1, self.bn1, x))
        y = F.relu_(conv_norm(self.conv2, self.bn2, y))
        y = conv_norm(self.conv3, self.bn3, y)
        return F.relu_(y + _shortcut(self, x))


class ResNet(nn.Module):
    """ResNet trunk without the classifier.

    Args:
        depth: 18, 34, 50 or 101.
        norm: norm of every layer ("FrozenBN", "BN", "SyncBN", "GN").
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 also freezes res2..res{k} (parameters get no gradient
            and their norms become FrozenBatchNorm2d, as detectron2 does).
        stride_in_1x1: put the stride of bottleneck blocks in the 1x1 conv (MSRA weights) instead of the 3x3.
        width: channels of the stem and of res2's blocks, doubled at every later stage (64: the published ResNets;
            narrower trunks are for training from scratch, where pretrained weights do not apply).

    forward: `Tensor[N, 3, H, W]` -> `[res2 Tensor[N, C2, H/4, W/4], ..., res5 Tensor[N, C5, H/32, W/32]]`.
    """

    def __init__(self, *, depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 2, stride_in_1x1: bool = True,
                 width: int = 64):
        super().__init__()
        if depth not in _BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS)}, got {depth}")
        kind, counts = _BLOCKS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1, self.bn1 = _conv(3, width, 7, 2), get_norm(norm, width)
        in_ch = width
        self.out_channels: list[int] = []
        for i, n in enumerate(counts):
            ch = width * 2**i
            blocks = []
            for b in range(n):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(block(in_channels=in_ch, channels=ch, stride=stride, norm=norm,
                                    stride_in_1x1=stride_in_1x1))
                in_ch = ch * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_ch)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        stages = [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]
        for stage in stages[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(stage)
        # convert_frozen_batchnorm replaces children in place, except a bare top-level norm: reassign the stem's.
        if freeze_at >= 1 and isinstance(self.bn1, nn.BatchNorm2d):
            self.bn1 = FrozenBatchNorm2d.convert_frozen_batchnorm(self.bn1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu_(conv_norm(self.conv1, self.bn1, x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs
