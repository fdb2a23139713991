"""The study's model variants, defined once: what `compare` trains and the label a finished run is shown under.

A variant sets every model config field the study varies (`STUDY_FIELDS`) on top of a preset, so it names the same
model whatever the preset's own recipe is: ``python -m opmask_fast.train --variant NAME`` and ``compare --variants``
apply it, and the analyses recognise it again from a checkpoint's stored config (`label_of`). `MAIN_VARIANTS` are the
three the main job compares; the others reproduce docs/study.md. A variant with a `train_split` trains with those
classes mask-supervised but is evaluated on the study's split (`upper_bound`: every class has masks, so its weak mask
AP is what the weak classes reach with full supervision, the paper's upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

# The fields a variant sets, with their value in the paper's OPMask.
STUDY_FIELDS = {
    "use_prior": True,
    "prior_scale": "none",
    "prior_feature_norm": False,
    "prior_cam": "class",
    "prior_every_conv": False,
    "prior_grad_scale": None,
    "prior_grad_rois": "all",
    "prior_resolution": "box",
    "prior_convs": "box_head",
    "prior_head_width": 0,
    "roi_heads.weak_mask_loss": "none",
    "roi_heads.pairwise_warmup_iters": 0,
}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    changes: tuple[tuple[str, object], ...] = ()  # fields that differ from STUDY_FIELDS
    train_split: str | None = None  # the training's strong classes, when not the study's split (e.g. "all")

    @property
    def fields(self) -> dict[str, object]:
        """Every study field's value in this variant."""
        return {**STUDY_FIELDS, **dict(self.changes)}


def _v(name: str, label: str, train_split: str | None = None, **changes) -> Variant:
    return Variant(name, label, tuple((k.replace("__", "."), v) for k, v in changes.items()), train_split)


_PROJ = {"roi_heads__weak_mask_loss": "box_projection"}
# The separate prior head's fields: the prior at the mask head's resolution from a prior head of its own (its convs and
# classifier on each mask RoI's 14x14 features, trained by the mask losses and by classifying the mask RoIs; the box
# head left to detection), weighted by the features' std, + the box projection term.
_SEPARATE = {"prior_scale": "feature_std", "prior_resolution": "mask", "prior_convs": "separate", **_PROJ}
# The headline's: that head 16 wide, trained through the mask-supervised RoIs' priors only (the weak RoIs' projection
# term, which a box-filling prior satisfies, trains the mask head alone; the prior head still learns their class).
_HEADLINE = {**_SEPARATE, "prior_head_width": 16, "prior_grad_rois": "mask_supervised"}
# The prior at the mask head's resolution from the box head's own convs, read without training them.
_DETACHED = {"prior_scale": "feature_std", "prior_resolution": "mask", "prior_grad_scale": 0.0, **_PROJ}
_ALL = [
    _v("baseline", "Mask R-CNN baseline", use_prior=False),
    _v("opmask", "OPMask (paper recipe)"),
    _v("opmask_std_boxproj_maskres_separate16_suponly", "OPMask + prior x feature std + box projection loss, prior at "
       "mask resolution from a 16-wide prior head trained by the mask-supervised RoIs", **_HEADLINE),
    # The headline's model with every class mask-supervised: the upper bound of the weak classes' mask AP (with every
    # RoI mask-supervised, prior_grad_rois changes nothing).
    _v("upper_bound", "Upper bound: the headline with every class mask-supervised", train_split="all", **_HEADLINE),
    # The box head's CAM over each RoI's own 14x14 mask features, the box head read, not trained, through it.
    _v("opmask_std_boxproj_maskres_detach", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution, box head detached", **_DETACHED),
    _v("upper_bound_detach", "Upper bound of the detached mask-resolution prior: its model with every class "
       "mask-supervised", train_split="all", **_DETACHED),
    # ... with the prior also added before every later mask-head conv (each weighted by that conv input's own std),
    # so the deeper layers see the holes and gaps the mask-resolution prior shows.
    _v("opmask_std_boxproj_maskres_detach_deep", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution, box head detached, prior at every mask conv", prior_every_conv=True, **_DETACHED),
    # ... with the CAM of the class-vs-background logit: a hole or a concave gap that looks like background scores
    # below the object's own cells.
    _v("opmask_std_boxproj_maskres_detach_cambg", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution, box head detached, class-vs-background CAM", prior_cam="class_vs_background", **_DETACHED),
    # The same recipe with the 7x7 prior (the box head's own map, resized), and its upper bound.
    _v("opmask_std_boxproj", "OPMask + prior x feature std + box projection loss", prior_scale="feature_std", **_PROJ),
    _v("upper_bound_7x7", "Upper bound of the 7x7 prior: its model with every class mask-supervised",
       train_split="all", prior_scale="feature_std", **_PROJ),
    # The study (docs/study.md): weights of the prior, what is done to the features, the CAM, box supervision alone.
    _v("opmask_gain", "OPMask + learnable gain", prior_scale="learnable"),
    _v("opmask_range", "OPMask + prior x feature range", prior_scale="feature_range"),
    _v("opmask_gain40", "OPMask + prior x40", prior_scale=40.0),
    _v("opmask_std", "OPMask + prior x feature std", prior_scale="feature_std"),
    _v("opmask_norm", "OPMask + standardised features", prior_feature_norm=True),
    _v("opmask_norm_range", "OPMask + standardised features + prior x range", prior_scale="feature_range",
       prior_feature_norm=True),
    _v("opmask_range_deep", "OPMask + prior x feature range at every mask conv", prior_scale="feature_range",
       prior_every_conv=True),
    _v("opmask_range_cambg", "OPMask + class-vs-background CAM x range", prior_scale="feature_range",
       prior_cam="class_vs_background"),
    _v("opmask_norm_range_cambg", "OPMask + standardised features + class-vs-background CAM x range",
       prior_scale="feature_range", prior_feature_norm=True, prior_cam="class_vs_background"),
    _v("baseline_boxproj", "Mask R-CNN + box projection loss", use_prior=False, **_PROJ),
    _v("opmask_range_boxproj", "OPMask + prior x range + box projection loss", prior_scale="feature_range", **_PROJ),
    _v("opmask_std_boxproj_pairwise", "OPMask + prior x feature std + box projection + pairwise colour loss",
       prior_scale="feature_std", roi_heads__weak_mask_loss="box_projection_pairwise"),
    _v("opmask_std_boxproj_pairwise_warm", "OPMask + prior x feature std + box projection + pairwise colour loss "
       "(BoxInst's warm-up)", prior_scale="feature_std", roi_heads__weak_mask_loss="box_projection_pairwise",
       roi_heads__pairwise_warmup_iters=89),  # the first ninth of the lite schedule's 800 steps, as BoxInst's 10k/90k
    # The mask-resolution prior from the box convs trained through it (the mask losses reach them, as the paper's 7x7
    # CAM).
    _v("opmask_std_boxproj_maskres", "OPMask + prior x feature std + box projection loss, prior at mask resolution",
       prior_scale="feature_std", prior_resolution="mask", **_PROJ),
    _v("upper_bound_maskres", "Upper bound of the mask-resolution prior trained through: its model with every class "
       "mask-supervised", train_split="all", prior_scale="feature_std", prior_resolution="mask", **_PROJ),
    # ... trained by the mask-supervised RoIs' loss only (the box projection term of the weak RoIs trains the mask head
    # alone), so no loss that sees only a box's extent shapes the box convs.
    _v("opmask_std_boxproj_maskres_suponly", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution, box head trained by the mask-supervised RoIs", prior_scale="feature_std", prior_resolution="mask",
       prior_grad_rois="mask_supervised", **_PROJ),
    # ... trained through zero-initialised residuals of the box convs' weights instead (the box head, and the features
    # it reads, get no gradient from the prior): a sharper prior without the mask losses pulling detection.
    _v("opmask_std_boxproj_maskres_residual", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution through residual box convs", prior_scale="feature_std", prior_resolution="mask",
       prior_convs="residual", **_PROJ),
    # ... trained through a prior head of its own that classifies the mask RoIs at the mask resolution.
    _v("opmask_std_boxproj_maskres_separate", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution from a separate prior head", **_SEPARATE),
    # ... the same head 16 channels wide, trained by every RoI's mask losses (at the box head's width its convs at
    # 14x14 cost twice the box head's at 7x7).
    _v("opmask_std_boxproj_maskres_separate16", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution from a separate prior head, 16 wide", prior_head_width=16, **_SEPARATE),
    # ... 32 wide, trained by every RoI's mask losses (with its upper bound), and by the mask-supervised RoIs' only.
    _v("opmask_std_boxproj_maskres_separate32", "OPMask + prior x feature std + box projection loss, prior at mask "
       "resolution from a 32-wide prior head", prior_head_width=32, **_SEPARATE),
    _v("upper_bound_separate32", "Upper bound of the 32-wide prior head: its model with every class mask-supervised",
       train_split="all", prior_head_width=32, **_SEPARATE),
    _v("opmask_std_boxproj_maskres_separate32_suponly", "OPMask + prior x feature std + box projection loss, prior at "
       "mask resolution from a 32-wide prior head trained by the mask-supervised RoIs", prior_head_width=32,
       prior_grad_rois="mask_supervised", **_SEPARATE),
    _v("upper_bound_separate", "Upper bound of the separate prior head: its model with every class mask-supervised",
       train_split="all", **_SEPARATE),
    _v("opmask_norm_range_boxproj", "OPMask + standardised features + prior x range + box projection loss",
       prior_scale="feature_range", prior_feature_norm=True, **_PROJ),
    # Diagnostics: the prior's forward weight and the gradient it sends into the box head, apart.
    _v("opmask_fwd40_grad1", "OPMask x40 forward, x1 gradient", prior_scale=40.0, prior_grad_scale=1.0),
    _v("opmask_fwd1_grad40", "OPMask x1 forward, x40 gradient", prior_grad_scale=40.0),
    _v("opmask_range_detach", "OPMask + prior x feature range, detached", prior_scale="feature_range",
       prior_grad_scale=0.0),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}
MAIN_VARIANTS = ("baseline", "opmask", "opmask_std_boxproj_maskres_separate16_suponly")
BASELINE = VARIANTS["baseline"]


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _model_key(variant: Variant) -> tuple:
    # The fields that make a model trained with every class mask-supervised: prior_grad_rois only routes the box-only
    # RoIs' gradient, so with every RoI mask-supervised it changes nothing.
    return tuple(sorted((k, v) for k, v in variant.fields.items() if k != "prior_grad_rois"))


_UPPER_BOUNDS = {_model_key(v): v.name for v in _ALL if v.train_split == "all"}


def upper_bound_of(name: str) -> str | None:
    """The variant that trains `name`'s model with every class mask-supervised (its upper bound), or None when the
    study defines none or `name` is itself trained on another split; e.g. the 16-wide prior head's bound is the
    headline's too (they differ in `prior_grad_rois` only)."""
    variant = get_variant(name)
    return None if variant.train_split is not None else _UPPER_BOUNDS.get(_model_key(variant))


def apply_variant(cfg, name: str):
    """Sets every study field of `cfg` (a `ModelConfig`) to the variant's value; returns `cfg`."""
    for key, value in get_variant(name).fields.items():
        *parents, leaf = key.split(".")
        obj = cfg
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return cfg


def _stored(model_config: dict, key: str):
    obj = model_config
    for p in key.split("."):
        obj = (obj or {}).get(p, STUDY_FIELDS[key])
    return obj


def label_of(model_config: dict, train_split: str | None = None) -> str:
    """The variant label of a stored model config (`ModelConfig.to_dict()`) and the checkpoint's `train_split` (None
    when it trained on the study's split), or for a model no variant names, a label listing its study fields that
    differ from the paper's OPMask."""
    stored = {k: _stored(model_config, k) for k in STUDY_FIELDS}
    if not stored["use_prior"]:  # the prior's own options do not change a model without one
        stored.update({k: v for k, v in STUDY_FIELDS.items() if k.startswith("prior_")})
    for v in _ALL:
        if stored == v.fields and v.train_split == train_split:
            return v.label
    diff = [f"{k.split('.')[-1]}={stored[k]}" for k in STUDY_FIELDS
            if k != "use_prior" and stored[k] != STUDY_FIELDS[k]]
    if train_split:
        diff.append(f"trained with split {train_split}")
    base = "OPMask" if stored["use_prior"] else BASELINE.label
    return f"{base} ({', '.join(diff)})" if diff else base
