"""Finished runs as the analyses see them, and the paper's Figure 3 analysis over several of them.

A run is a folder with ``metrics.json`` (written by ``opmask_fast.train`` or ``opmask_fast.evaluate``) and, when it was
trained there, ``checkpoint.pth``, whose stored config tells the model kind (baseline or OPMask and its prior scale),
the split and the training annotation file. Runs of one model kind are pooled: each class's mask AP is taken from
the runs where the class is weak (complementary splits together cover every class, as in the paper).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from ..variants import BASELINE, STUDY_FIELDS, label_of
from .figure3 import MIN_CLASSES, ClassOverlap, Regression, pool_weak_ap, regress, relative_improvements



@dataclass
class Run:
    """One finished run."""

    folder: str
    metrics_path: str
    metrics: dict
    meta: dict  # the checkpoint's meta (model_config, split, data, ...); {} without a checkpoint
    label: str  # the model kind: runs with the same label are pooled

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.folder))

    @property
    def checkpoint(self) -> str | None:
        path = os.path.join(self.folder, "checkpoint.pth")
        return path if os.path.isfile(path) else None

    @property
    def train_ann(self) -> str | None:
        return (self.meta.get("data") or {}).get("train_ann")


_PATH_FIELDS = ("backbone.weights",)  # where the initial weights were read: one file may sit at two paths


def pooling_differences(runs: list[Run]) -> list[str]:
    """For the runs pooled under one label (seeds of one model, or complementary splits): a line per label whose runs'
    checkpoints differ in their model config beyond the study's fields (another preset, a `--set`), naming them."""
    notes = []
    for label in dict.fromkeys(r.label for r in runs):
        flat = [(r, _flatten(r.meta["model_config"])) for r in runs if r.label == label and r.meta.get("model_config")]
        differ = sorted({k for _, f in flat for k in f if k not in STUDY_FIELDS and k not in _PATH_FIELDS
                         and any(g.get(k) != f.get(k) for _, g in flat)})
        if differ:
            notes.append(f"{', '.join(r.name for r, _ in flat)} are pooled as {label!r} but differ in "
                         f"{', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}")
    return notes


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def model_kind(model_config: dict, train_split: str | None = None) -> str:
    """A readable model kind from a stored model config (and the split it trained with, when not the study's): the
    label of the variant it is (``opmask_fast.variants``)."""
    return label_of(model_config, train_split)


def load_run(arg: str) -> Run:
    """A run from ``PATH`` (a run folder or its metrics.json) or ``LABEL=PATH`` (names the model kind yourself).

    Raises:
        FileNotFoundError: no metrics.json there.
        ValueError: the metrics.json has no per-class mask AP or no weak classes (not written by opmask_fast).
    """
    label = None
    if not os.path.exists(arg) and "=" in arg:
        label, arg = arg.split("=", 1)
    path = os.path.join(arg, "metrics.json") if os.path.isdir(arg) else arg
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics.json at {arg}: give a finished run's folder or its metrics.json")
    try:
        with open(path) as f:
            metrics = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in ("mask_AP_per_class", "weak_categories", "strong_categories") if k not in metrics]
    if not isinstance(metrics, dict) or missing:
        raise ValueError(f"{path} lacks {', '.join(missing) or 'a JSON object'}: it was not written by "
                         "opmask_fast.train or opmask_fast.evaluate")
    folder = os.path.dirname(os.path.abspath(path))
    meta = {}
    ckpt = os.path.join(folder, "checkpoint.pth")
    if os.path.isfile(ckpt):
        try:  # mmap: only the small meta dict is read, not the weights
            meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("meta") or {}
        except Exception as e:
            raise ValueError(f"cannot read checkpoint {ckpt}: {e}") from None
    if label is None:
        label = model_kind(meta["model_config"], meta.get("train_split")) if "model_config" in meta else os.path.basename(folder)
    return Run(folder=folder, metrics_path=path, metrics=metrics, meta=meta, label=label)


def read_log(run: Run) -> list[dict]:
    """The run's ``metrics.jsonl`` records (empty when there is none)."""
    path = os.path.join(run.folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Group:
    """The runs of one model kind and their pooled weak-class mask AP."""

    label: str
    runs: list[Run]
    ap: dict[str, float]  # class name -> mask AP from the runs where it is weak
    regression: Regression


@dataclass
class Analysis:
    overlap: dict[str, ClassOverlap]
    groups: list[Group]
    improvements: list[tuple[str, str, list]] = field(default_factory=list)  # (base label, new label, rows)

    @property
    def mean_iou(self) -> dict[str, float]:
        return {k: v.mean_iou for k, v in self.overlap.items()}


def analyze(runs: list[Run], overlap: dict[str, ClassOverlap], *, min_classes: int = MIN_CLASSES,
            top: int = 5) -> Analysis:
    """Figure 3 over ``runs``: pooled weak-class AP and the regression per model kind (baseline first), and the
    classes with the largest relative improvement of every other kind over the baseline (or over the first kind)."""
    labels = sorted(dict.fromkeys(r.label for r in runs), key=lambda lab: lab != BASELINE.label)
    groups = []
    for lab in labels:
        members = [r for r in runs if r.label == lab]
        ap = pool_weak_ap([r.metrics for r in members])
        names = sorted(k for k in ap if k in overlap)
        reg = regress([overlap[k].mean_iou for k in names], [ap[k] for k in names], min_points=min_classes)
        groups.append(Group(label=lab, runs=members, ap=ap, regression=reg))
    out = Analysis(overlap=overlap, groups=groups)
    if len(groups) > 1:
        base = groups[0]
        for g in groups[1:]:
            out.improvements.append((base.label, g.label, relative_improvements(base.ap, g.ap, top=top)))
    return out


def format_analysis(a: Analysis) -> str:
    """Markdown: the per-class table (mean IoU, pairs, pooled weak AP per kind), the regressions, the improvements."""
    def cell(v):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}"

    names = sorted({k for g in a.groups for k in g.ap}, key=lambda k: (-_nan0(a.overlap[k].mean_iou)
                                                                          if k in a.overlap else 0, k))
    lines = ["| class | mean box IoU | pairs | " + " | ".join(f"mask AP weak: {g.label}" for g in a.groups) + " |",
             "|---|---|---|" + "---|" * len(a.groups)]
    for k in names:
        o = a.overlap.get(k)
        iou = "-" if o is None or not math.isfinite(o.mean_iou) else f"{o.mean_iou:.3f}"
        lines.append(f"| {k} | {iou} | {o.num_pairs if o else 0} | " +
                     " | ".join(cell(g.ap.get(k)) for g in a.groups) + " |")
    lines.append("")
    for g in a.groups:
        runs = ", ".join(r.name for r in g.runs)
        lines.append(f"- **{g.label}** ({runs}): {g.regression.describe()}")
    for base, new, rows in a.improvements:
        if rows:
            parts = ", ".join(f"{k} {b:.1f} -> {n:.1f} ({100 * rel:+.0f}%)" for k, b, n, rel in rows)
            lines.append(f"- largest relative improvement, {new} over {base}: {parts}")
    return "\n".join(lines)


def _nan0(v: float) -> float:
    return v if math.isfinite(v) else -1.0
