"""The object mask prior's weight: how the [0, 1] prior is scaled before it is added to the RoI mask features.

One definition, shared by the model (`modeling.roi_heads.RoIHeads`) and the swap-in module (`ObjectMaskPrior`):

- "none": added as is (the paper's recipe);
- a float: a fixed gain;
- "learnable": a learnable scalar gain. At small scale the prior's spread is ~30x smaller than the mask features' and
  the mask head learns to ignore it, so by default the gain starts at std(mask features) / std(prior) measured on the
  first training batch (stored, so a resumed run does not re-measure), or at `init` when one is given;
- "feature_std" / "feature_range": a gain per RoI read off that RoI's own (detached) mask features, so the prior is
  commensurate with whatever scale the features have on a given dataset and backbone, with no constant to tune:
  std(features) / std(prior) (the prior gets the features' spread) or max(features) - min(features) (the [0, 1] prior
  spans the features' range, the min-max normalisation carried over to the features' units).

`grad_scale` sets the factor on the gradient that reaches the box head through the prior, apart from the forward
gain (0 detaches the box features: no "refinement" of the prior by the mask loss); a diagnostic of the study.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from opmask_fast.ops._tracing import fx_leaf
from opmask_fast.ops.reference.roi_align import MAP_WEIGHTS, map_gain

ADAPTIVE_MODES = MAP_WEIGHTS[1:]  # the weights RoIAlign can read off its own output: "feature_std", "feature_range"
PRIOR_SCALE_MODES = ("none", "learnable", *ADAPTIVE_MODES)  # or a finite float: a fixed gain


def parse_prior_scale(value: str | float, name: str = "the prior scale") -> str | float:
    """A prior scale from text or a number: one of `PRIOR_SCALE_MODES` or a finite float gain (a ValueError naming
    `name`, e.g. the option, otherwise)."""
    if isinstance(value, str) and value in PRIOR_SCALE_MODES:
        return value
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name} must be one of {', '.join(PRIOR_SCALE_MODES)} or a finite number, "
                         f"got {value!r}")
    return number


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


@fx_leaf  # one graph node under torch.fx (map_gain branches on the features' shape)
def roi_gain(mask_features: Tensor, prior: Tensor, mode: str) -> Tensor:
    """`map_gain` as `Tensor[R, 1, 1, 1]` in the features' dtype, to multiply the prior of each RoI."""
    return map_gain(mask_features, prior, mode).view(-1, 1, 1, 1).to(mask_features.dtype)


class PriorWeight(nn.Module):
    """Weights the normalised prior and adds it to the mask features: ``forward(features, prior_map)``.

    Args:
        scale: "none", "learnable", "feature_std", "feature_range" or a float (see the module docstring).
        init: start value of the learnable gain; None measures it on the first training batch (`initialize`).
        grad_scale: factor on the gradient that reaches the prior (None: the forward gain, as autograd gives it).
    """

    def __init__(self, *, scale: str | float = "none", init: float | None = None, grad_scale: float | None = None):
        super().__init__()
        scale = parse_prior_scale(scale)
        self.mode = scale if isinstance(scale, str) else "fixed"
        self.fixed = float(scale) if self.mode == "fixed" else None
        self.grad_scale = grad_scale
        if self.mode == "learnable":
            self.gain = nn.Parameter(torch.tensor([1.0 if init is None else float(init)]))
            self.register_buffer("initialized", torch.tensor(init is not None))
            # The buffer's value mirrored on the host, for traced calls (torch.compile, torch.export), which cannot
            # read it; kept by `initialize` and by loading a state dict.
            self._initialized = init is not None
            self.register_load_state_dict_post_hook(PriorWeight._mirror_initialized)

    @property
    def adaptive(self) -> bool:
        """Whether the gain is read per RoI off the features (then it cannot be fused into RoIAlign's write)."""
        return self.mode in ADAPTIVE_MODES

    @property
    def fusable(self) -> bool:
        """Whether the weighted prior is a function of the prior alone (a constant or learnable gain, plain
        gradient): then any op can add it as it writes its output (`object_prior_add`, RoIAlign's roi_map)."""
        return not self.adaptive and self.grad_scale is None and not self.needs_init()

    @property
    def fusable_in_roi_align(self) -> bool:
        """Whether RoIAlign can add the weighted prior as it writes the mask features: the fusable weights, and the
        adaptive ones, which RoIAlign reads off each RoI's output itself (`map_weight`)."""
        return self.grad_scale is None and not self.needs_init()

    @property
    def map_weight(self) -> str:
        """RoIAlign's `map_weight` for this weight: the adaptive mode, or "none" (the map comes weighted)."""
        return self.mode if self.adaptive else "none"

    def value(self) -> float | Tensor | None:
        """What multiplies the normalised prior when it does not depend on the features: None (1), a float, or the
        `Tensor[1]` learnable gain (for the adaptive modes see `per_roi`)."""
        return self.gain if self.mode == "learnable" else self.fixed

    @torch.no_grad()
    def per_roi(self, mask_features: Tensor, prior: Tensor) -> Tensor:
        """Adaptive gain `Tensor[R, 1, 1, 1]` from `mask_features Tensor[R, C, H, W]` and `prior Tensor[R, H, W]`."""
        return roi_gain(mask_features, prior, self.mode)

    def forward(self, features: Tensor, prior_map: Tensor) -> Tensor:
        """`features Tensor[R, C, H, W]` + weight * `prior_map Tensor[R, H, W]`, broadcast over the channels."""
        gain = self.per_roi(features, prior_map) if self.adaptive else self.value()
        return add_prior(features, prior_map, gain, grad_scale=self.grad_scale)

    def needs_init(self) -> bool:
        """Whether the learnable gain is still to be measured on a training batch (`initialize`)."""
        if self.mode != "learnable" or not self.training:
            return False
        if not torch.compiler.is_compiling():
            self._initialized = bool(self.initialized)  # eager: the buffer itself, wherever it was set
        return not self._initialized

    @staticmethod
    def _mirror_initialized(module: nn.Module, incompatible_keys) -> None:
        module._initialized = bool(module.initialized)

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
        self._initialized = True

    def extra_repr(self) -> str:
        return f"mode={self.mode}" + (f", value={self.fixed}" if self.fixed is not None else "") + (
            f", grad_scale={self.grad_scale}" if self.grad_scale is not None else "")


__all__ = ["ADAPTIVE_MODES", "PRIOR_SCALE_MODES", "PriorWeight", "add_prior", "parse_prior_scale"]
