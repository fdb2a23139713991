"""Drawing helpers the synthetic generators share: polygons to masks, HSV colours, the visible part of each shape."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def polygon_mask(poly: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Binary ``[height, width]`` mask of a polygon given as (x, y) pixel coordinates."""
    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).polygon(poly, fill=1)
    return np.asarray(im, dtype=bool)


def rgb(h: float, sat: float, val: float) -> np.ndarray:
    """An RGB colour in [0, 255] from a hue in degrees, saturation and value in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360, sat, val)) * 255


def visible_instances(shapes: list[tuple[str, np.ndarray]], min_visible: float) -> list[tuple[str, np.ndarray]]:
    """The visible part of each shape (bool masks in drawing order: later ones occlude earlier ones) as ``uint8``,
    dropping instances with fewer than 16 or ``min_visible`` of their pixels visible; drawing order is kept."""
    instances, covered = [], np.zeros(shapes[0][1].shape if shapes else (0, 0), dtype=bool)
    for cls, mask in reversed(shapes):
        visible = mask & ~covered
        covered |= mask
        if visible.sum() >= max(16, min_visible * mask.sum()):
            instances.append((cls, visible.astype(np.uint8)))
    return instances[::-1]
