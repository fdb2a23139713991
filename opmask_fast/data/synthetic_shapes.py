"""The embedded dataset: synthetic shapes in COCO format, built to show the failure mode of partial supervision.

Six shape classes, three strong (masks supervised: circle, triangle, cross) and three weak (boxes only: ring, square,
star). Each class has a typical hue (jittered per instance) and each instance a random texture, on a grey textured
background. Small objects are placed inside the boxes of big ones, weak inside strong and strong inside weak, and
same-size objects overlap, so many boxes contain a second object. A class-agnostic mask head trained on the strong
classes sees weak objects only as background inside strong boxes and learns "weak colour = background": it then fails on
the weak classes, the failure OPMask's prior is meant to fix.

The data is a pure function of the seed (``numpy.random.Generator`` per image), written once into a cache folder as PNG
files plus ``annotations/instances_{train,val}.json`` (masks: compressed RLE of the visible part; boxes from the
masks).

Written by ``synthetic.ensure_synthetic`` (style "shapes").
"""


from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .synthetic_draw import polygon_mask, rgb, visible_instances

CLASSES = ("circle", "triangle", "cross", "ring", "square", "star")
STRONG_CLASSES = ("circle", "triangle", "cross")
WEAK_CLASSES = ("ring", "square", "star")
# Class-typical hues (degrees), spread around the colour wheel so colour alone separates the classes.
HUES = {"circle": 0, "triangle": 120, "cross": 240, "ring": 60, "square": 180, "star": 300}
VERSION = "shapes-v1"


def render_image(rng: np.random.Generator, spec) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One image: ``uint8 [S, S, 3]`` and the visible mask of each kept instance, in drawing order."""
    s = spec.image_size
    img = _background(rng, s)
    layout = _layout(rng, s)
    shapes = []
    for cls, cx, cy, size in layout:
        mask = shape_mask(cls, cx, cy, size, float(rng.uniform(0, 2 * math.pi)), s)
        if mask.sum() < 16:
            continue
        img = np.where(mask[..., None], _texture(rng, cls, s, spec.hue_jitter), img)
        shapes.append((cls, mask))
    return img.astype(np.uint8), visible_instances(shapes, spec.min_visible)


def _layout(rng: np.random.Generator, s: int) -> list[tuple[str, float, float, float]]:
    """(class, centre x, centre y, size) in drawing order: containers first, then what sits inside or on them."""
    out = []
    for _ in range(int(rng.integers(1, 3))):
        # A big container with 1-2 small objects inside its box, mostly of the other group (weak in strong and
        # strong in weak).
        big = str(rng.choice(CLASSES))
        size = float(rng.uniform(0.38, 0.6) * s)
        cx, cy = (float(v) for v in rng.uniform(size / 2, s - size / 2, 2))
        out.append((big, cx, cy, size))
        other = WEAK_CLASSES if big in STRONG_CLASSES else STRONG_CLASSES
        for _ in range(int(rng.integers(1, 3))):
            small = str(rng.choice(other if rng.random() < 0.8 else CLASSES))
            ssize = float(rng.uniform(0.14, 0.24) * s)
            off = (size - ssize) / 2 * 0.8
            out.append((small, cx + float(rng.uniform(-off, off)), cy + float(rng.uniform(-off, off)), ssize))
    if rng.random() < 0.6:
        # Two similar objects overlapping heavily: ambiguous boxes (IoU >= 0.5).
        size = float(rng.uniform(0.25, 0.4) * s)
        cx, cy = (float(v) for v in rng.uniform(size / 2, s - size / 2, 2))
        a, b = (str(c) for c in rng.choice(CLASSES, 2))
        out.append((a, cx, cy, size))
        dx, dy = (float(v) * size for v in rng.uniform(-0.2, 0.2, 2))
        out.append((b, cx + dx, cy + dy, size * float(rng.uniform(0.8, 1.1))))
    for _ in range(int(rng.integers(0, 3))):
        # Free-standing objects of any class and size.
        size = float(rng.uniform(0.15, 0.35) * s)
        cx, cy = (float(v) for v in rng.uniform(size / 2, s - size / 2, 2))
        out.append((str(rng.choice(CLASSES)), cx, cy, size))
    return out


def shape_mask(cls: str, cx: float, cy: float, size: float, angle: float, s: int) -> np.ndarray:
    """Binary ``[s, s]`` mask of a shape of diameter ~``size`` centred at (cx, cy), rotated by ``angle``."""
    r = size / 2
    if cls in ("circle", "ring"):
        yy, xx = np.mgrid[0:s, 0:s] + 0.5
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        m = d2 <= r * r
        return m & (d2 >= (0.55 * r) ** 2) if cls == "ring" else m
    if cls == "triangle":
        pts = [(r, a) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    elif cls == "square":
        pts = [(r, a + math.pi / 4) for a in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)]
    elif cls == "star":
        pts = [(r if k % 2 == 0 else 0.45 * r, k * math.pi / 5) for k in range(10)]
    elif cls == "cross":
        w = 0.3  # arm half-width relative to r
        base = [(1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w),
                (1, -w)]
        pts = [(r * math.hypot(x, y), math.atan2(y, x)) for x, y in base]
    else:
        raise ValueError(f"unknown shape class {cls!r}")
    poly = [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in pts]
    return polygon_mask(poly, s, s)


def _texture(rng: np.random.Generator, cls: str, s: int, hue_jitter: float) -> np.ndarray:
    """An ``[s, s, 3]`` fill in the class hue: flat, stripes or checks in two shades, plus pixel noise."""
    hue = HUES[cls] + float(rng.uniform(-hue_jitter, hue_jitter))
    c1 = rgb(hue, float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.6, 1.0)))
    c2 = c1 * float(rng.uniform(0.45, 0.75))
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:s, 0:s]
    if kind == 0:
        sel = np.zeros((s, s), dtype=bool)
    elif kind == 1:
        a, period = float(rng.uniform(0, math.pi)), float(rng.uniform(4, 9))
        sel = ((xx * math.cos(a) + yy * math.sin(a)) // (period / 2)) % 2 == 0
    else:
        period = int(rng.integers(4, 9))
        sel = ((xx // period) + (yy // period)) % 2 == 0
    fill = np.where(sel[..., None], c2, c1)
    return np.clip(fill + rng.normal(0, 6, (s, s, 3)), 0, 255)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Low-saturation smooth noise: textured but never in a class hue's saturation range."""
    base = rgb(float(rng.uniform(0, 360)), float(rng.uniform(0, 0.2)), float(rng.uniform(0.25, 0.85)))
    coarse = rng.normal(0, 25, (8, 8, 1)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse[..., 0]).resize((s, s), Image.BILINEAR))[..., None]
    return np.clip(base + smooth + rng.normal(0, 8, (s, s, 3)), 0, 255)
