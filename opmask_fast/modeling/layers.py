"""Small layers shared by the backbone and the heads: frozen BatchNorm and the norm-by-name factory."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained).

    Pretrained detection backbones are fine-tuned at 2 images per GPU, far too few for batch statistics; freezing them keeps
    the ImageNet statistics. Folded into one scale and shift, so it costs one multiply-add.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        # torchvision BatchNorm state dicts carry a counter that a frozen norm has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm in `module` (recursively) by a FrozenBatchNorm2d holding its current values."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new = cls.convert_frozen_batchnorm(child)
            if new is not child:
                setattr(module, name, new)
        return module


def get_norm(norm: str, channels: int) -> nn.Module:
    """Norm layer by name: "BN", "SyncBN", "FrozenBN", "GN" (32 groups, fewer when channels are few) or "" (identity)."""
    if norm == "":
        return nn.Identity()
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        groups = 32
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {norm!r}; use 'BN', 'SyncBN', 'FrozenBN', 'GN' or ''")


def conv_norm_relu(in_channels: int, out_channels: int, *, norm: str, kernel_size: int = 3) -> nn.Sequential:
    """3x3 conv (bias only without norm) + norm + ReLU, MSRA-initialised: the unit of the box and mask heads."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "")
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, get_norm(norm, out_channels), nn.ReLU(inplace=True))
