"""Greedy placement of text labels that avoid each other, for the pictures (boxes in images, classes in scatter plots).

Every label has a list of candidate rectangles in order of preference (pixel coordinates, ``(x0, y0, x1, y1)``); labels
are placed one after the other, each in its first candidate that overlaps nothing placed so far, no obstacle and stays
inside the bounds, or else in the candidate with the least overlap. Greedy is enough for tens of labels and keeps every
label next to what it names.
"""

from __future__ import annotations

import math
from typing import Sequence

Rect = tuple[float, float, float, float]


def _overlap(a: Rect, b: Rect) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(r: Rect, bounds: Rect | None) -> float:
    if bounds is None:
        return 0.0
    area = (r[2] - r[0]) * (r[3] - r[1])
    return area - _overlap(r, bounds)


def place_labels(candidates: Sequence[Sequence[Rect]], *, obstacles: Sequence[Rect] = (),
                 bounds: Rect | None = None) -> list[Rect]:
    """Picks one rectangle per label (see the module docstring).

    Args:
        candidates: per label, its candidate rectangles, preferred first (at least one each).
        obstacles: rectangles no label should cover (e.g. the scatter markers).
        bounds: the drawing area; area outside it counts as overlap.

    Returns:
        the chosen rectangle of each label, in the input order.
    """
    placed: list[Rect] = []
    for cands in candidates:
        if not cands:
            raise ValueError("every label needs at least one candidate rectangle")
        best, best_cost = cands[0], math.inf
        for r in cands:
            cost = _outside(r, bounds) * 4.0  # text cut by the border is worse than text over text
            cost += sum(_overlap(r, o) for o in placed) + 0.5 * sum(_overlap(r, o) for o in obstacles)
            if cost < best_cost:
                best, best_cost = r, cost
                if cost == 0:
                    break
        placed.append(best)
    return placed


def around_point(x: float, y: float, w: float, h: float, *, gap: float = 3.0, rings: int = 6) -> list[Rect]:
    """Candidates for a ``w x h`` label naming the point ``(x, y)``: right, left, above, below and the diagonals,
    then the same directions further out (``rings`` distances), never covering the point itself."""
    dirs = [(1, 0), (-1, 0), (0, -1), (0, 1), (1, -1), (-1, -1), (1, 1), (-1, 1)]
    out = []
    for k in range(rings):
        d = gap + k * h
        for dx, dy in dirs:
            cx = x + dx * (w / 2 + d)
            cy = y + dy * (h / 2 + d)
            out.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return out


def around_box(box: Sequence[float], w: float, h: float, *, stack: int = 4) -> list[Rect]:
    """Candidates for a ``w x h`` label of an image box ``(x0, y0, x1, y1)``: on top of the box at its left edge,
    inside its top-left corner, under it, at its right edge, then stacked further above and below."""
    x0, y0, x1, y1 = box
    out = [(x0, y0 - h, x0 + w, y0), (x0, y0, x0 + w, y0 + h), (x0, y1, x0 + w, y1 + h),
           (x1 - w, y0 - h, x1, y0), (x1 - w, y1, x1, y1 + h), (x0, y1 - h, x0 + w, y1)]
    for k in range(1, stack + 1):
        out += [(x0, y0 - (k + 1) * h, x0 + w, y0 - k * h), (x0, y1 + k * h, x0 + w, y1 + (k + 1) * h),
                (x0, y0 + k * h, x0 + w, y0 + (k + 1) * h)]
    return out
