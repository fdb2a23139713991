"""Test-time probes of the object mask prior, attached from outside the model.

The prior is the min-max normalised CAM (in [0, 1]) of one class row of the detached box classifier over the box head's
last conv map, resized 7x7 -> 14x14 and added, weighted (`opmask_fast.ops.prior_weight`), to every channel of the
RoI's mask features. `RoIHeads.prior_tap` marks where the prior map meets the mask features; the probes hook it:

    with prior_ablation(model, "shuffle"):      # each RoI gets another RoI's prior (or "zero": none)
        metrics = evaluate_model(model, ...)
    with prior_statistics(model) as records:    # per mask pass: each RoI's feature and prior spread
        model(images)

While a probe is attached the model adds the prior in a second pass over the mask features (the fused RoIAlign path
never materialises the map separately); the answers are the same up to float rounding.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

ABLATIONS = ("zero", "shuffle")


class PriorTap(nn.Module):
    """Identity on the prior map: ``forward(mask_features, prior_map) -> prior_map``. A forward hook sees both and
    may return a replacement map."""

    def forward(self, mask_features: Tensor, prior_map: Tensor) -> Tensor:
        return prior_map


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
    raise ValueError(f"prior ablation must be None or one of {', '.join(ABLATIONS)}, got {mode!r}")


@torch.no_grad()
def roi_statistics(features: Tensor, prior_map: Tensor) -> dict[str, Tensor]:
    """Per RoI: `feature_std`, `feature_range` of `features Tensor[R, C, H, W]` and `prior_std` of the unweighted
    `prior_map Tensor[R, H, W]`, each `Tensor[R]` float32 on the CPU; their ratio says how visible the prior is."""
    f = features.detach().float().flatten(1)
    return {"feature_std": f.std(dim=1).cpu(), "feature_range": (f.amax(dim=1) - f.amin(dim=1)).cpu(),
            "prior_std": prior_map.detach().float().flatten(1).std(dim=1).cpu()}


def _tap(model: nn.Module) -> PriorTap:
    heads = getattr(getattr(model, "module", model), "roi_heads", model)  # a DDP wrapper, the model or its heads
    tap = getattr(heads, "prior_tap", None)
    if tap is None:
        raise ValueError("the model has no object prior (use_prior=False): nothing to probe")
    return tap


@contextlib.contextmanager
def prior_ablation(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Within the block, the model in eval mode replaces every prior map by `ablate_prior(map, mode)`; None does
    nothing. Training passes are left alone."""
    if mode is None:
        yield
        return
    if mode not in ABLATIONS:
        raise ValueError(f"prior ablation must be None or one of {', '.join(ABLATIONS)}, got {mode!r}")
    handle = _tap(model).register_forward_hook(
        lambda module, args, prior_map: prior_map if module.training else ablate_prior(prior_map, mode))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def prior_statistics(model: nn.Module) -> Iterator[list[dict[str, Tensor]]]:
    """Within the block, every mask pass appends its RoIs' `roi_statistics` to the yielded list."""
    records: list[dict[str, Tensor]] = []
    handle = _tap(model).register_forward_hook(
        lambda module, args, prior_map: records.append(roi_statistics(args[0], prior_map)))
    try:
        yield records
    finally:
        handle.remove()


__all__ = ["ABLATIONS", "PriorTap", "ablate_prior", "prior_ablation", "prior_statistics", "roi_statistics"]
