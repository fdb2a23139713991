"""The object mask prior's weight and its injection into the mask features.

The prior is the min-max normalised CAM (in [0, 1]) of one class row of the detached box classifier over the box head's
last conv map, resized 7x7 -> 14x14 and added to every channel of the RoI's mask features. Its weight:
- "none": added as is (the paper's recipe);
- a float: a fixed gain;
- "learnable": a learnable scalar gain. At small scale the prior's spread is ~30x smaller than the mask features' and the
  mask head learns to ignore it, so by default the gain starts at std(mask features) / std(prior) measured on the first
  training batch (stored, so a resumed run does not re-measure), or at `init` when one is given.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class PriorGain(nn.Module):
    """Holds the prior's weight and measures its start value (the prior itself comes from `opmask_fast.ops`).

    Args:
        scale: "none", "learnable" or a float.
        init: start value of the learnable gain; None measures it on the first training batch.
    """

    def __init__(self, *, scale, init: float | None = None):
        super().__init__()
        self.mode = "learnable" if scale == "learnable" else ("none" if scale == "none" else "fixed")
        self.fixed = None if self.mode != "fixed" else float(scale)
        if self.mode == "learnable":
            self.gain = nn.Parameter(torch.tensor([1.0 if init is None else float(init)]))
            self.register_buffer("initialized", torch.tensor(init is not None))

    def value(self) -> float | Tensor | None:
        """What multiplies the normalised prior: None (1), a float, or the `Tensor[1]` learnable gain."""
        return self.gain if self.mode == "learnable" else self.fixed

    def needs_init(self) -> bool:
        return self.mode == "learnable" and self.training and not bool(self.initialized)

    @torch.no_grad()
    def initialize(self, mask_features: Tensor, prior: Tensor) -> None:
        """Set the gain to std(mask features) / std(prior) of one batch (averaged over processes when distributed)."""
        ratio = mask_features.float().std() / prior.float().std().clamp(min=1e-6)
        ratio = torch.nan_to_num(ratio, nan=1.0, posinf=1.0).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(ratio)
            ratio /= dist.get_world_size()
        self.gain.copy_(ratio.to(self.gain))
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"mode={self.mode}" + (f", value={self.fixed}" if self.fixed is not None else "")


def prior_roi_map(prior: Tensor, size: int, gain: float | Tensor | None) -> Tensor:
    """`Tensor[R, Hb, Wb]` normalised prior -> `Tensor[R, size, size]` resized (bilinear, align_corners=False), weighted."""
    out = F.interpolate(prior[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return out if gain is None else out * gain


__all__ = ["PriorGain", "prior_roi_map"]
