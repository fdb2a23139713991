"""`ObjectMaskPrior`: OPMask's object mask prior as a module for any detector with a conv box head and a linear
classifier (`ops.swap_in` puts it into torchvision's Mask R-CNN). It adds the box classifier's CAM to the mask
features with the model's own ops and weight (`object_prior_add`, `object_prior`, `PriorWeight`)."""

from __future__ import annotations

from torch import Tensor, nn

from opmask_fast.ops.object_prior import object_prior
from opmask_fast.ops.object_prior_add import object_prior_add
from opmask_fast.ops.prior_weight import PriorWeight


class ObjectMaskPrior(nn.Module):
    """OPMask's object mask prior for any detector: adds the box classifier's CAM to the mask features.

    Args:
        classifier: the box classifier (nn.Linear over the global-average-pooled box features, weight Tensor[K, C]).
            It is referenced, not registered: it stays a parameter of the box head only. None: `forward` and `prior`
            take the weight as `cls_weight` on every call (a detector whose classifier may be replaced after the
            prior is built, e.g. torchvision's fine-tuning recipe, passes its current one).
        scale: the prior's weight, as the model's (`opmask_fast.ops.prior_weight`): "none" (gain 1, the paper),
            "learnable", "feature_std", "feature_range" or a fixed float.
        init: start of the learnable gain (None: std(mask features) / std(prior) of the first training batch).
        normalize: per-RoI min-max normalisation of the CAM.
        detach_weight: use the classifier weight detached (OPMask: mask gradients reach the box features only).
        backend: "auto", "triton" or "reference".
    """

    def __init__(self, *, classifier: nn.Linear | None = None, scale: str | float = "none", init: float | None = 1.0,
                 normalize: bool = True, detach_weight: bool = True, backend: str = "auto"):
        super().__init__()
        self._classifier = (classifier,)  # a tuple keeps nn.Module from registering it (no duplicate state_dict keys)
        self.normalize, self.detach_weight, self.backend = normalize, detach_weight, backend
        self.prior_weight = PriorWeight(scale="none" if scale is None else scale, init=init)

    def cls_weight(self, given: Tensor | None = None) -> Tensor:
        """The classifier weight Tensor[K, C] the prior uses: `given`, else the referenced classifier's."""
        if given is None:
            if self._classifier[0] is None:
                raise ValueError("ObjectMaskPrior was built without a classifier: give cls_weight")
            given = self._classifier[0].weight
        return given.detach() if self.detach_weight else given

    def forward(self, mask_features: Tensor, box_features: Tensor, classes: Tensor, rows: Tensor | None = None,
                cls_weight: Tensor | None = None) -> Tensor:
        """Tensor[R, D, Hm, Wm] mask features + prior; box_features Tensor[N, C, Hb, Wb], classes/rows Tensor[R],
        cls_weight Tensor[K, C] (None: the classifier's)."""
        weight = self.cls_weight(cls_weight)
        if self.prior_weight.needs_init():
            self.prior_weight.initialize(mask_features, self.prior(box_features, classes, rows, weight))
        if self.prior_weight.fusable:  # one fused pass: the prior is weighted and added as the output is written
            return object_prior_add(mask_features, box_features, weight, classes, rows, self.normalize,
                                    self.prior_weight.value(), self.backend)
        prior_map = object_prior(box_features, weight, classes, rows, self.normalize, self.backend,
                                 size=mask_features.shape[-2:])  # not tuple(): a Proxy under torch.fx
        return self.prior_weight(mask_features, prior_map)

    def prior(self, box_features: Tensor, classes: Tensor, rows: Tensor | None = None,
              cls_weight: Tensor | None = None) -> Tensor:
        """Each RoI's normalised CAM, Tensor[R, Hb, Wb]."""
        return object_prior(box_features, self.cls_weight(cls_weight), classes, rows, self.normalize, self.backend)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, detach_weight={self.detach_weight}, backend={self.backend}"
