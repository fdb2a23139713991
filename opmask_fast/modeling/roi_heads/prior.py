"""The object mask prior's weight and its injection into the mask features.

The prior is the min-max normalised CAM (in [0, 1]) of one class row of the detached box classifier over the box head's
last conv map, resized 7x7 -> 14x14 and added to every channel of the RoI's mask features. Its weight:
- "none": added as is (the paper's recipe);
- a float: a fixed gain;
- "learnable": a learnable scalar gain. At small scale the prior's spread is ~30x smaller than the mask features' and the
  mask head learns to ignore it, so by default the gain starts at std(mask features) / std(prior) measured on the first
  training batch (stored, so a resumed run does not re-measure), or at `init` when one is given;
- "feature_std" / "feature_range": a gain per RoI read off that RoI's own (detached) mask features, so the prior is
  commensurate with whatever scale the features have on a given dataset and backbone, with no constant to tune:
  std(features) / std(prior) (the prior gets the features' spread) or max(features) - min(features) (the [0, 1] prior
  spans the features' range, the min-max normalisation carried over to the features' units).

Two diagnostic switches act on the add: the model's `prior_feature_norm` standardises each RoI's features first (no
parameters), and `grad_scale` (`add_prior`) sets the factor on the gradient that reaches the box head through the prior, apart from the
forward gain (0 detaches the box features: no "refinement" of the prior by the mask loss).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

ADAPTIVE_MODES = ("feature_std", "feature_range")


class PriorGain(nn.Module):
    """Holds the prior's weight and measures its start value (the prior itself comes from `opmask_fast.ops`).

    Args:
        scale: "none", "learnable", "feature_std", "feature_range" or a float.
        init: start value of the learnable gain; None measures it on the first training batch.
    """

    def __init__(self, *, scale, init: float | None = None):
        super().__init__()
        self.mode = scale if scale in ("none", "learnable", *ADAPTIVE_MODES) else "fixed"
        self.fixed = None if self.mode != "fixed" else float(scale)
        if self.mode == "learnable":
            self.gain = nn.Parameter(torch.tensor([1.0 if init is None else float(init)]))
            self.register_buffer("initialized", torch.tensor(init is not None))

    @property
    def adaptive(self) -> bool:
        return self.mode in ADAPTIVE_MODES

    def value(self) -> float | Tensor | None:
        """What multiplies the normalised prior: None (1), a float, or the `Tensor[1]` learnable gain (not for the
        adaptive modes: see `per_roi`)."""
        return self.gain if self.mode == "learnable" else self.fixed

    @torch.no_grad()
    def per_roi(self, mask_features: Tensor, prior: Tensor) -> Tensor:
        """Adaptive gain `Tensor[R, 1, 1, 1]` from `mask_features Tensor[R, C, H, W]` and `prior Tensor[R, H, W]`."""
        wide = torch.promote_types(mask_features.dtype, torch.float32)  # statistics of half-precision maps in fp32
        f = mask_features.detach().to(wide).flatten(1)
        if self.mode == "feature_std":
            gain = f.std(dim=1) / prior.detach().to(wide).flatten(1).std(dim=1).clamp(min=1e-6)
        else:
            gain = f.amax(dim=1) - f.amin(dim=1)
        return torch.nan_to_num(gain, nan=0.0, posinf=0.0).view(-1, 1, 1, 1).to(mask_features.dtype)

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


def ablate_prior(prior: Tensor, mode: str | None, *, seed: int = 0) -> Tensor:
    """Test-time ablations of `prior Tensor[R, H, W]`: "zero" (no prior) or "shuffle" (each RoI gets another RoI's
    prior: a random cyclic derangement, so no RoI keeps its own when R >= 2). None returns it unchanged."""
    if mode is None:
        return prior
    if mode == "zero":
        return torch.zeros_like(prior)
    if mode == "shuffle":
        r = prior.shape[0]
        if r < 2:
            return prior
        order = torch.randperm(r, generator=torch.Generator().manual_seed(seed)).to(prior.device)
        src = torch.empty_like(order)
        src[order] = order.roll(-1)  # RoI order[i] takes the prior of order[i + 1]
        return prior[src]
    raise ValueError(f"prior ablation must be None, 'zero' or 'shuffle', got {mode!r}")


def add_prior(features: Tensor, prior_map: Tensor, gain: float | Tensor | None, *,
              grad_scale: float | None = None) -> Tensor:
    """`features Tensor[R, C, H, W]` + gain * `prior_map Tensor[R, H, W]` broadcast over the channels.

    Args:
        gain: None (1), a float, a `Tensor[1]` (learnable) or a per-RoI `Tensor[R, 1, 1, 1]`.
        grad_scale: the gradient that reaches `prior_map` is the features' gradient times this (instead of times the
            gain); 0 stops it. A learnable gain keeps its own gradient.
    """
    p = prior_map[:, None].to(features.dtype)
    if grad_scale is None:
        return features + (p if gain is None else p * gain)
    pd = p.detach()
    # Forward value gain * p; backward d/dp = grad_scale.
    return features + (pd if gain is None else pd * gain) + grad_scale * (p - pd)


@torch.no_grad()
def prior_statistics(features: Tensor, prior_map: Tensor) -> dict[str, Tensor]:
    """Per RoI: `feature_std`, `feature_range` of `features Tensor[R, C, H, W]` and `prior_std` of the unweighted
    `prior_map Tensor[R, H, W]`, each `Tensor[R]` float32 on the CPU; their ratio says how visible the prior is."""
    f = features.detach().float().flatten(1)
    return {"feature_std": f.std(dim=1).cpu(), "feature_range": (f.amax(dim=1) - f.amin(dim=1)).cpu(),
            "prior_std": prior_map.detach().float().flatten(1).std(dim=1).cpu()}


__all__ = ["ADAPTIVE_MODES", "PriorGain", "ablate_prior", "add_prior", "prior_statistics"]
