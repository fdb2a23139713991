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
    def initialize(self, mask_features: Tensor | None, prior: Tensor | None) -> None:
        """Set the gain to std(mask features) / std(prior) of one batch, averaged over the processes that had RoIs.

        When distributed, every process must call it in the same step (a collective): one without mask RoIs passes
        None for both. If no process had any, the gain stays uninitialised and the next step measures it.
        """
        stats = torch.zeros(2, device=self.gain.device)  # (sum of ratios, number of processes with RoIs)
        if mask_features is not None and prior is not None and prior.numel() > 0:
            ratio = mask_features.float().std() / prior.float().std().clamp(min=1e-6)
            stats[0], stats[1] = torch.nan_to_num(ratio, nan=1.0, posinf=1.0), 1.0
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        if float(stats[1]) == 0:
            return
        self.gain.fill_(float(stats[0] / stats[1]))
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"mode={self.mode}" + (f", value={self.fixed}" if self.fixed is not None else "")


def prior_roi_map(prior: Tensor, size: int, gain: float | Tensor | None) -> Tensor:
    """`Tensor[R, Hb, Wb]` normalised prior -> `Tensor[R, size, size]` resized (bilinear, align_corners=False), weighted."""
    out = F.interpolate(prior[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return out if gain is None else out * gain


__all__ = ["PriorGain", "prior_roi_map"]
