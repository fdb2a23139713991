"""Plots of finished runs with matplotlib (Agg backend, PNG files): the paper's Figure 3 and the loss curves."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from .drawing import literal_text, plt  # the Agg backend: files only, the same pixels on every machine
from .figure3 import Regression, format_p
from .label_placement import around_point, place_labels

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
HIGHLIGHT = "black"  # the highlighted classes' labels: bold black beside the grey ones


def label_points(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], *, bold: Sequence[bool] = (),
                 fontsize: float = 8.0, colour: str = "0.35") -> None:
    """Writes ``texts[i]`` next to the point ``(xs[i], ys[i])`` of ``ax``; the labels avoid each other, the markers and
    the axes' border. Call it after the axis limits are final."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    artists, cands = [], []
    for i, (text, (px, py)) in enumerate(zip(texts, pts)):
        weight = "bold" if i < len(bold) and bold[i] else "normal"
        t = ax.text(0, 0, text, fontsize=fontsize + (1 if weight == "bold" else 0), fontweight=weight, ha="left",
                    va="bottom", zorder=4, color=HIGHLIGHT if weight == "bold" else colour)
        bb = t.get_window_extent(renderer)
        artists.append(t)
        cands.append(around_point(px, py, bb.width, bb.height, gap=3.0, rings=12))
    marker = 4.0  # half-size in pixels of the square each marker keeps free
    obstacles = [(px - marker, py - marker, px + marker, py + marker) for px, py in pts]
    if ax.get_legend() is not None:
        lb = ax.get_legend().get_window_extent(renderer)
        obstacles.append((lb.x0, lb.y0, lb.x1, lb.y1))
    box = ax.get_window_extent(renderer)
    chosen = place_labels(cands, obstacles=obstacles, bounds=(box.x0, box.y0, box.x1, box.y1))
    inv = ax.transData.inverted()
    for t, r, (px, py) in zip(artists, chosen, pts):
        t.set_position(inv.transform((r[0], r[1])))
        near = (min(max(px, r[0]), r[2]), min(max(py, r[1]), r[3]))  # the label's closest point
        if math.hypot(near[0] - px, near[1] - py) > 1.5 * (r[3] - r[1]):  # moved away: a thin leader line
            ax.plot(*zip(inv.transform((px, py)), inv.transform(near)), color="0.6", lw=0.5, zorder=1)


@literal_text
def plot_figure3(series: Sequence[tuple[str, dict[str, float], Regression]], mean_iou: dict[str, float], path: str, *,
                 highlight: Sequence[str] = (), title: str | None = None) -> str:
    """The paper's Figure 3: weak-class mask AP against the class's mean box IoU, one panel per model kind.

    Args:
        series: ``(label, {class name: mask AP}, regression)`` per model kind; the regression's line is drawn when it
            is meaningful, and its slope, r and p (or why there is none) are in the legend.
        mean_iou: class name -> mean box IoU (x axis).
        highlight: classes written in bold red (the largest relative improvements).

    Returns:
        ``path`` (a PNG).
    """
    n = max(len(series), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), sharey=True, squeeze=False, dpi=110)
    # Only the plotted points: a class without a box pair has a NaN mean IoU (min/max of a list that starts with NaN
    # is NaN, and matplotlib refuses NaN limits).
    all_x = [mean_iou[k] for _, ap, _ in series for k in ap if k in mean_iou and math.isfinite(mean_iou[k])]
    all_y = [v for _, ap, _ in series for v in ap.values() if math.isfinite(v)]
    xlo, xhi = (min(all_x), max(all_x)) if all_x else (0.0, 1.0)
    pad = max((xhi - xlo) * 0.15, 0.01)
    ylim = (-3.0, max(all_y + [10.0]) * 1.15 + 2.0)
    to_label = []
    for j, (label, ap, reg) in enumerate(series):
        ax = axes[0, j]
        names = sorted(k for k in ap if k in mean_iou and math.isfinite(mean_iou[k]))
        x = np.array([mean_iou[k] for k in names])
        y = np.array([ap[k] for k in names])
        colour = COLOURS[j % len(COLOURS)]
        ax.scatter(x, y, s=18, color=colour, zorder=3, label=f"{label} ({len(names)} classes)")
        if reg.meaningful:
            xs = np.array([xlo - pad, xhi + pad])
            ax.plot(xs, reg.slope * xs + reg.intercept, color=colour, lw=1.6, zorder=2,
                    label=f"slope {reg.slope:.1f}, r = {reg.r:.2f}, {format_p(reg.p)}")
        else:
            ax.plot([], [], " ", label=f"no line: {reg.reason}")
        ax.set_xlim(xlo - pad, xhi + pad)
        ax.set_ylim(*ylim)
        ax.set_xlabel("mean box IoU of the class (training annotations)")
        if j == 0:
            ax.set_ylabel("mask AP of the class when weak")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
        to_label.append((ax, x, y, names))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()  # before the labels: they are placed in the final pixel layout
    for ax, x, y, names in to_label:
        label_points(ax, x, y, names, bold=[k in set(highlight) for k in names],
                     fontsize=8 if len(names) <= 30 else 6)
    return _save(fig, path)


LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")


@literal_text
def plot_losses(logs: Sequence[tuple[str, list[dict]]], path: str) -> str:
    """Loss curves from ``metrics.jsonl`` records: the total loss of each run, and beside it the loss terms (one run)
    or the mask loss of each run (several runs). Returns ``path``."""
    # metrics.jsonl also holds the evaluations of --eval-period and of the end ({"iteration", "eval"}): no loss there
    logs = [(label, [r for r in records if "loss" in r]) for label, records in logs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for j, (label, records) in enumerate(logs):
        it = [r["iteration"] for r in records]
        a.plot(it, [r["loss"] for r in records], color=COLOURS[j % len(COLOURS)], label=label)
        if len(logs) > 1:
            b.plot(it, [r.get("loss_mask", math.nan) for r in records], color=COLOURS[j % len(COLOURS)], label=label)
    if len(logs) == 1:
        records = logs[0][1]
        for k in [k for k in LOSS_KEYS if any(k in r for r in records)]:
            b.plot([r["iteration"] for r in records], [r.get(k, math.nan) for r in records], label=k)
        b.set_title("loss terms", fontsize=10)
    else:
        b.set_title("mask loss (strong classes only)", fontsize=10)
    a.set_title("total training loss", fontsize=10)
    for ax in (a, b):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
