"""A second synthetic dataset ("shapes2") with other rules than the embedded one, for checking that what works on the
embedded set is not tuned to its rules.

Eight classes in two groups built to be of similar difficulty, each group with one convex, one hollow, one concave and
one thin shape: strong (masks supervised) ellipse, hexring (hollow hexagon), lshape, bar; weak (boxes only) diamond,
frame (hollow square), heart, arrow. Colour is tied to class for half of the classes only: hexring, lshape, frame and
heart have a class-typical hue (jittered by ``spec.hue_jitter``), ellipse, bar, diamond and arrow a random hue per
instance. Fills are flat, shaded by a gradient or dotted, on a low-saturation gradient background with unannotated thin
line clutter.

Images have variable sizes: the short side is ``spec.image_size``, the long side 1-1.5 times that, landscape or
portrait. Object sizes range from 0.1 to 0.75 of the short side. Per image: 1-2 big containers with 1-3 small objects of
any class inside their box, 1-5 free objects anywhere (cut by the image border), and in 60% of the images a pile of 2-3
similar-size objects partly covering each other. Groups are drawn in random order, later ones occluding earlier ones;
an instance's ground truth is its visible part (dropped below ``spec.min_visible`` of its in-image pixels).

Same guarantees as ``synthetic``: a pure function of the seed, written by ``synthetic.ensure_synthetic``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_draw import polygon_mask, rgb, visible_instances

VERSION = "shapes2-v1"
CLASSES = ("ellipse", "hexring", "lshape", "bar", "diamond", "frame", "heart", "arrow")
STRONG_CLASSES = ("ellipse", "hexring", "lshape", "bar")
WEAK_CLASSES = ("diamond", "frame", "heart", "arrow")
RANDOM_HUE_CLASSES = ("ellipse", "bar", "diamond", "arrow")
# Class-typical hues (degrees) of the other half, one per quarter of the colour wheel.
HUES = {"hexring": 30, "lshape": 210, "frame": 120, "heart": 300}

# Outlines in unit coordinates (x, y in [-1, 1]); the hollow classes also have a hole.
_HEXAGON = [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]
_SQUARE = [(0.8, 0.8), (-0.8, 0.8), (-0.8, -0.8), (0.8, -0.8)]
_T = np.linspace(0, 2 * math.pi, 48, endpoint=False)
_HEART = list(zip(16 * np.sin(_T) ** 3 / 17,
                  -(13 * np.cos(_T) - 5 * np.cos(2 * _T) - 2 * np.cos(3 * _T) - np.cos(4 * _T)) / 17 - 0.35))
OUTLINES = {
    "hexring": (_HEXAGON, 0.55),
    "frame": (_SQUARE, 0.55),
    "lshape": ([(-1, -1), (1, -1), (1, -0.3), (-0.3, -0.3), (-0.3, 1), (-1, 1)], None),
    "heart": ([(float(x), float(y)) for x, y in _HEART], None),
    "arrow": ([(-1, -0.14), (0.25, -0.14), (0.25, -0.5), (1, 0), (0.25, 0.5), (0.25, 0.14), (-1, 0.14)], None),
}


def render_image(rng: np.random.Generator, spec) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One image: ``uint8 [H, W, 3]`` and the visible mask of each kept instance, in drawing order."""
    s = spec.image_size
    long = int(round(s * float(rng.uniform(1.0, 1.5)) / 8) * 8)
    h, w = (s, long) if rng.random() < 0.5 else (long, s)
    img = _background(rng, h, w)
    shapes = []
    for cls, cx, cy, size in _layout(rng, h, w):
        mask = shape_mask(cls, cx, cy, size, float(rng.uniform(0, 2 * math.pi)), float(rng.random()), h, w)
        if mask.sum() < 16:
            continue
        hue = float(rng.uniform(0, 360)) if cls in RANDOM_HUE_CLASSES else \
            HUES[cls] + float(rng.uniform(-spec.hue_jitter, spec.hue_jitter))
        # The fill is made for the shape's box only: its pattern is relative to the object, and it is cheaper.
        ys, xs = np.nonzero(mask)
        box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        fill = _fill(rng, hue, box[0].stop - box[0].start, box[1].stop - box[1].start)
        img[box] = np.where(mask[box][..., None], fill, img[box])
        shapes.append((cls, mask))
    return img.astype(np.uint8), visible_instances(shapes, spec.min_visible)


def _layout(rng: np.random.Generator, h: int, w: int) -> list[tuple[str, float, float, float]]:
    """(class, centre x, centre y, size) in drawing order: groups (container + contents, free object, pile) shuffled."""
    s = min(h, w)
    groups = []
    for _ in range(int(rng.integers(1, 3))):
        size = float(rng.uniform(0.45, 0.75) * s)
        cx, cy = float(rng.uniform(size / 2, w - size / 2)), float(rng.uniform(size / 2, h - size / 2))
        group = [(str(rng.choice(CLASSES)), cx, cy, size)]
        for _ in range(int(rng.integers(1, 4))):
            # Contents of any class: weak inside strong boxes as often as chance makes it.
            ssize = float(rng.uniform(0.1, 0.22) * s)
            off = (size - ssize) / 2 * 0.7
            group.append((str(rng.choice(CLASSES)), cx + float(rng.uniform(-off, off)),
                          cy + float(rng.uniform(-off, off)), ssize))
        groups.append(group)
    for _ in range(int(rng.integers(1, 6))):
        size = float(rng.uniform(0.1, 0.45) * s)
        groups.append([(str(rng.choice(CLASSES)), float(rng.uniform(0, w)), float(rng.uniform(0, h)), size)])
    if rng.random() < 0.6:
        # A pile: similar-size objects shifted by 0.1-0.4 of their size, each partly covering the one before.
        size = float(rng.uniform(0.25, 0.45) * s)
        cx, cy = float(rng.uniform(size / 2, w - size / 2)), float(rng.uniform(size / 2, h - size / 2))
        pile = []
        for _ in range(int(rng.integers(2, 4))):
            pile.append((str(rng.choice(CLASSES)), cx, cy, size * float(rng.uniform(0.85, 1.15))))
            a, d = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.1, 0.4)) * size
            cx, cy = cx + d * math.cos(a), cy + d * math.sin(a)
        groups.append(pile)
    return [item for i in rng.permutation(len(groups)) for item in groups[int(i)]]


def shape_mask(cls: str, cx: float, cy: float, size: float, angle: float, aspect: float, h: int,
               w: int) -> np.ndarray:
    """Binary ``[h, w]`` mask of a shape ~``size`` across centred at (cx, cy), rotated by ``angle``.

    ``aspect`` in [0, 1) sets the shape's free proportion: an ellipse's axis ratio, a bar's or a diamond's width.
    """
    r = size / 2
    if cls == "ellipse":
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        b = r * (0.4 + 0.35 * aspect)
        return (u / r) ** 2 + (v / b) ** 2 <= 1
    if cls == "bar":
        t = 0.12 + 0.1 * aspect
        outline, hole = [(-1, -t), (1, -t), (1, t), (-1, t)], None
    elif cls == "diamond":
        a = 0.55 + 0.25 * aspect
        outline, hole = [(1, 0), (0, a), (-1, 0), (0, -a)], None
    elif cls in OUTLINES:
        outline, hole = OUTLINES[cls]
    else:
        raise ValueError(f"unknown shape class {cls!r}")

    def place(points, scale):
        c, sn = math.cos(angle), math.sin(angle)
        return [(cx + scale * r * (x * c - y * sn), cy + scale * r * (x * sn + y * c)) for x, y in points]

    mask = polygon_mask(place(outline, 1.0), h, w)
    if hole is not None:
        mask &= ~polygon_mask(place(outline, hole), h, w)
    return mask


def _fill(rng: np.random.Generator, hue: float, h: int, w: int) -> np.ndarray:
    """An ``[h, w, 3]`` fill of one hue: flat, darkened along a gradient across it or dotted, plus pixel noise."""
    c1 = rgb(hue, float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.5, 1.0)))
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        shade = np.ones((h, w), dtype=np.float32)
    elif kind == 1:
        a = float(rng.uniform(0, 2 * math.pi))
        t = xx * math.cos(a) + yy * math.sin(a)
        shade = 1 - 0.5 * (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    else:
        p = float(rng.uniform(5, 9))
        dots = ((xx % p) - p / 2) ** 2 + ((yy % p) - p / 2) ** 2 < (0.3 * p) ** 2
        shade = np.where(dots, float(rng.uniform(0.45, 0.7)), 1.0)
    return np.clip(c1 * shade[..., None] + rng.normal(0, 5, (h, w, 3)), 0, 255)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A gradient between two low-saturation colours, pixel noise and 3-8 unannotated thin lines."""
    c1, c2 = (rgb(float(rng.uniform(0, 360)), float(rng.uniform(0, 0.2)), float(rng.uniform(0.25, 0.85)))
              for _ in range(2))
    a = float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:h, 0:w]
    t = xx * math.cos(a) + yy * math.sin(a)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1.0))[..., None]
    im = Image.fromarray(np.clip(c1 * (1 - t) + c2 * t, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        colour = rgb(float(rng.uniform(0, 360)), float(rng.uniform(0, 0.2)), float(rng.uniform(0.2, 0.9)))
        ends = [float(v) for v in (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h))]
        draw.line(ends, fill=tuple(int(c) for c in colour), width=int(rng.integers(1, 3)))
    return np.clip(np.asarray(im, dtype=np.float64) + rng.normal(0, 6, (h, w, 3)), 0, 255)
