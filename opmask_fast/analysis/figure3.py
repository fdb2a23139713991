"""The OPMask paper's Figure 3: how much each class overlaps others, regressed against its weak-class mask AP.

The paper (Sec. 4.2, "Learning classes as background") approximates the overlap between classes by "the IoU of all
ground-truth bounding boxes" of the dataset and regresses "the mean IoU of each class" against its mask AP. Here that
is, over a COCO instances file:

- every ordered pair (a, b) of distinct non-crowd ground-truth boxes of the same image gives IoU(a, b), pairs that do
  not touch included (IoU 0), any two classes (the same class too);
- the mean IoU of a class is the mean over the pairs whose first box is of that class. A box alone in its image forms
  no pair; a class without any pair has no mean IoU and stays out of the regression.

Crowd regions are left out: they are not instances (COCO evaluation ignores them too).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO

from ..evaluation.coco_eval import box_iou_xywh

# Below this many classes the regression is reported as not meaningful: with n classes the slope's t-test has n - 2
# degrees of freedom, and with n < 5 one class alone can flip the sign of the slope (the paper regresses 80 classes).
MIN_CLASSES = 5


@dataclass
class ClassOverlap:
    """The overlap statistic of one category."""

    category_id: int
    name: str
    mean_iou: float  # NaN when the class has no pair
    num_pairs: int  # ordered pairs whose first box is of this class
    num_boxes: int  # non-crowd boxes of this class


def class_overlap(coco: COCO) -> dict[str, ClassOverlap]:
    """Mean box IoU of each category with every other ground-truth box of the same image (definition above).

    Returns:
        category name -> ``ClassOverlap``, for every category of the file (in the file's order).
    """
    sums: dict[int, float] = defaultdict(float)
    pairs: dict[int, int] = defaultdict(int)
    boxes_per_class: dict[int, int] = defaultdict(int)
    for anns in coco.imgToAnns.values():
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        if not anns:
            continue
        cats = np.array([int(a["category_id"]) for a in anns])
        for c in cats:
            boxes_per_class[int(c)] += 1
        if len(anns) < 2:
            continue
        iou = box_iou_xywh(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
        np.fill_diagonal(iou, 0.0)
        row_sums = iou.sum(axis=1)  # each box's IoU with all the others of its image
        for c, s in zip(cats.tolist(), row_sums.tolist()):
            sums[c] += s
            pairs[c] += len(anns) - 1
    out = {}
    for cat in coco.dataset["categories"]:
        c = int(cat["id"])
        mean = sums[c] / pairs[c] if pairs[c] else math.nan
        out[str(cat["name"])] = ClassOverlap(category_id=c, name=str(cat["name"]), mean_iou=mean,
                                             num_pairs=pairs[c], num_boxes=boxes_per_class[c])
    return out


@dataclass
class Regression:
    """Least-squares line of mask AP on mean IoU, and the t-test of its slope (two-sided)."""

    n: int
    slope: float | None = None
    intercept: float | None = None
    r: float | None = None
    p: float | None = None
    reason: str | None = None  # why there is no line (then slope, r and p are None)

    @property
    def meaningful(self) -> bool:
        return self.reason is None

    def describe(self) -> str:
        if not self.meaningful:
            return f"regression not meaningful: {self.reason}"
        return f"slope {self.slope:.1f} AP per unit IoU, r = {self.r:.3f}, {format_p(self.p)} ({self.n} classes)"


def format_p(p: float) -> str:
    """As the paper writes it: ``p = .003``, and ``p < .001`` below that."""
    return "p < .001" if p < 0.001 else "p = " + f"{p:.3f}".lstrip("0")


def regress(x, y, *, min_points: int = MIN_CLASSES) -> Regression:
    """Fits ``y = slope * x + intercept`` by least squares; tests slope = 0 with a t-test on n - 2 degrees of freedom.

    Args:
        x, y: sequences of the same length (NaN pairs are dropped first).
        min_points: fewer classes than this give a ``Regression`` with a ``reason`` instead of numbers.
    """
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < min_points:
        return Regression(n=n, reason=f"{n} classes, fewer than {min_points}")
    if np.ptp(x) == 0:
        return Regression(n=n, reason="every class has the same mean IoU")
    if np.ptp(y) == 0:
        return Regression(n=n, reason=f"every class has the same mask AP ({y[0]:.1f})")
    fit = stats.linregress(x, y)
    return Regression(n=n, slope=float(fit.slope), intercept=float(fit.intercept), r=float(fit.rvalue),
                      p=float(fit.pvalue))


def pool_weak_ap(runs: list[dict]) -> dict[str, float]:
    """Mask AP of each class taken from the runs where it is weak, as the paper pools its two complementary splits.

    Args:
        runs: metrics.json dicts of one model kind (``mask_AP_per_class``, ``weak_categories``). A class weak in several
            of them (seeds, repeated splits) gets the mean of its APs; classes weak in none, or without ground truth
            in the evaluation (AP null), are left out.

    Returns:
        class name -> mask AP (percent).
    """
    values: dict[str, list[float]] = defaultdict(list)
    for m in runs:
        per_class = m.get("mask_AP_per_class") or {}
        for name in m.get("weak_categories") or []:
            ap = per_class.get(name)
            if ap is not None and math.isfinite(float(ap)):
                values[name].append(float(ap))
    return {k: sum(v) / len(v) for k, v in values.items()}


def relative_improvements(base: dict[str, float], new: dict[str, float], *, floor: float = 1.0,
                          top: int = 5) -> list[tuple[str, float, float, float]]:
    """The classes whose AP grew most relative to ``base``: ``(name, base AP, new AP, relative change)``, best first.

    Only classes that improved at the precision reports print (0.1 AP) are listed: 0.00 -> 0.03 is noise, not "+3%".
    The relative change is (new - base) / max(base, floor): the floor (1 AP point) keeps classes the baseline scores 0
    on finite and comparable.
    """
    rows = [(k, base[k], new[k], (new[k] - base[k]) / max(base[k], floor))
            for k in base if k in new and round(new[k], 1) > round(base[k], 1)]
    rows.sort(key=lambda r: (-r[3], r[0]))
    return rows[:top]
