"""The main job's table: one column per variant, each headline metric's mean (and sample std over seeds), the weak
mask AP against the baseline's and as a share of the upper bound's (`python -m opmask_fast.compare`)."""

from __future__ import annotations

import math
import statistics

from ..evaluation.metrics import METRIC_LABELS
from ..variants import VARIANTS, upper_bound_of

# The comparison's rows, in order; the last one only where compare timed each model alone (--time-inference).
ROWS = [(METRIC_LABELS[k], k) for k in (
    "mask_AP_weak", "mask_AP_strong", "mask_AP50_weak", "box_AP_weak", "mask_AP_ambiguous", "mask_AP_unambiguous",
    "prior_AP_weak", "prior_AP_strong", "oracle_mIoU_weak", "oracle_mIoU_strong")] + [
    ("s/img (inference, alone)", "seconds_per_image_alone")]


def _label(variant: str) -> str:
    return VARIANTS[variant].label if variant in VARIANTS else variant


def _stats(values: list) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def format_comparison(results: dict[str, list[dict]]) -> str:
    """A Markdown table: one column per variant, mean (+- std over seeds when there are several) per metric."""
    names = [v for v in results if results[v]]
    if not names:
        return "no run finished: no table"
    head = "| metric | " + " | ".join(_label(v) for v in names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for label, key in ROWS:
        if key == "seconds_per_image_alone" and not any(key in m for v in names for m in results[v]):
            continue  # timed only with --time-inference
        cells = []
        for v in names:
            mean, std = _stats([m.get(key) for m in results[v]])
            digits = 3 if key.startswith("seconds") else 1
            cell = "-" if math.isnan(mean) else f"{mean:.{digits}f}"
            if not math.isnan(std):
                cell += f" ± {std:.{digits}f}"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = {v: [m["seed"] for m in results[v]] for v in names}
    lines.append("")
    lines.append("seeds: " + "; ".join(f"{v} {s}" for v, s in seeds.items()) +
                 (" (mean ± sample std over seeds)" if any(len(s) > 1 for s in seeds.values()) else ""))
    if "baseline" in names:
        base = _stats([m.get("mask_AP_weak") for m in results["baseline"]])[0]
        for v in names:
            if v != "baseline":
                gain = _stats([m.get("mask_AP_weak") for m in results[v]])[0] - base
                if not math.isnan(gain):  # NaN: no weak class (--split all)
                    lines.append(f"weak mask AP vs baseline: {_label(v)} {gain:+.1f}")
    # Each variant against its own upper bound (its model with every class mask-supervised, variants.py) where that
    # ran, else against the headline's (`upper_bound`); the bounds themselves are not shared out.
    for v in names:
        if v not in VARIANTS or VARIANTS[v].train_split is not None:
            continue
        own = upper_bound_of(v)
        b = own if own in names else ("upper_bound" if "upper_bound" in names else None)
        bound = _stats([m.get("mask_AP_weak") for m in results[b]])[0] if b else math.nan
        if bound > 0:
            share = _stats([m.get("mask_AP_weak") for m in results[v]])[0] / bound
            which = "the upper bound" if b == "upper_bound" else b
            lines.append(f"weak mask AP as a share of {which}'s ({bound:.1f}): {_label(v)} {share:.0%}")
    return "\n".join(lines)
