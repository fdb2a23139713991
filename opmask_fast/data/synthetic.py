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

A second generator with other rules (other shapes, colour tied to only half of the classes, variable image sizes, other
crowding) lives in ``synthetic_shapes2``; ``SyntheticSpec.style`` picks one and ``DATASETS`` holds the named defaults.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CLASSES = ("circle", "triangle", "cross", "ring", "square", "star")
STRONG_CLASSES = ("circle", "triangle", "cross")
WEAK_CLASSES = ("ring", "square", "star")
# Class-typical hues (degrees), spread around the colour wheel so colour alone separates the classes.
HUES = {"circle": 0, "triangle": 120, "cross": 240, "ring": 60, "square": 180, "star": 300}
VERSION = "shapes-v1"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every field is part of the cache key."""

    seed: int = 0
    num_train: int = 1000
    num_val: int = 200
    image_size: int = 128
    hue_jitter: float = 15.0  # degrees; small jitter keeps colours class-typical
    min_visible: float = 0.25  # drop instances with less of their shape visible
    style: str = "shapes"  # the generator: "shapes" (this module) or "shapes2" (synthetic_shapes2)

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"unknown synthetic dataset style {self.style!r}; known: {', '.join(STYLES)}")


class Style(NamedTuple):
    """One generator: its version tag (cache key and JSON info), classes, strong classes and image renderer."""

    version: str
    classes: tuple[str, ...]
    strong_classes: tuple[str, ...]
    render: Callable  # (rng, spec) -> (uint8 [H, W, 3], [(class, uint8 [H, W] visible mask), ...])
    info: dict  # extra entries of the annotation files' "info"


STYLES = ("shapes", "shapes2")


def get_style(name: str) -> Style:
    if name == "shapes":
        return Style(VERSION, CLASSES, STRONG_CLASSES, render_image, {})
    if name == "shapes2":
        from . import synthetic_shapes2 as s2  # imports this module's helpers, hence imported here

        return Style(s2.VERSION, s2.CLASSES, s2.STRONG_CLASSES, s2.render_image,
                     {"random_hue_categories": list(s2.RANDOM_HUE_CLASSES)})
    raise ValueError(f"unknown synthetic dataset style {name!r}; known: {', '.join(STYLES)}")


# The named datasets of the command-line tools (--dataset): each one's default spec.
DATASETS = {
    "shapes": SyntheticSpec(),
    "shapes2": SyntheticSpec(style="shapes2", image_size=160, hue_jitter=10.0, min_visible=0.2),
}


def dataset_spec(name: str, *, seed: int = 0, num_train: int | None = None,
                 num_val: int | None = None) -> SyntheticSpec:
    """The spec of the named dataset (``DATASETS``) with another seed and, when given, other image counts."""
    if name not in DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; known: {', '.join(DATASETS)}")
    base = DATASETS[name]
    return replace(base, seed=seed, num_train=base.num_train if num_train is None else num_train,
                   num_val=base.num_val if num_val is None else num_val)


def spec_dict(spec: SyntheticSpec) -> dict:
    """The spec as written into the dataset; the default style is left out so "shapes" files stay as they were."""
    d = asdict(spec)
    if spec.style == "shapes":
        del d["style"]
    return d


def cache_key(spec: SyntheticSpec) -> str:
    return (f"{get_style(spec.style).version}-s{spec.seed}-n{spec.num_train}-{spec.num_val}-px{spec.image_size}"
            f"-h{spec.hue_jitter:g}-v{spec.min_visible:g}")


def default_cache_root() -> str:
    return os.environ.get("OPMASK_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "opmask_fast"))


def dataset_paths(root: str) -> dict[str, str]:
    """The ``ann_file``/``image_dir`` pairs of a generated dataset folder."""
    return {
        "train_ann": os.path.join(root, "annotations", "instances_train.json"),
        "train_images": os.path.join(root, "train"),
        "val_ann": os.path.join(root, "annotations", "instances_val.json"),
        "val_images": os.path.join(root, "val"),
    }


def ensure_synthetic(spec: SyntheticSpec = SyntheticSpec(), cache_root: str | None = None, *,
                     workers: int = 1) -> dict[str, str]:
    """Generates the dataset of ``spec`` once into the cache and returns its paths (see ``dataset_paths``).

    Generation goes to a temporary folder renamed into place at the end, so an interrupted run leaves no half dataset
    and two processes racing to create it both end with the same complete one. ``workers`` > 1 renders in that many
    forked processes (same files, byte for byte: every image draws from its own generator); call it so only from a
    process that has not started torch's thread pools yet (the main job does it first thing).
    """
    cache_root = cache_root or default_cache_root()
    key = cache_key(spec)
    root = os.path.join(cache_root, "synthetic", key)
    if os.path.isfile(os.path.join(root, "COMPLETE")):
        return dataset_paths(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=key + ".tmp", dir=os.path.dirname(root))
    try:
        write_dataset(spec, tmp, workers=workers)
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump(spec_dict(spec), f)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(os.path.join(root, "COMPLETE")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset_paths(root)


def write_dataset(spec: SyntheticSpec, root: str, *, workers: int = 1) -> None:
    style = get_style(spec.style)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [
        {"id": i + 1, "name": n, "supercategory": "strong" if n in style.strong_classes else "weak"}
        for i, n in enumerate(style.classes)
    ]
    for split, count, offset in (("train", spec.num_train, 0), ("val", spec.num_val, 1)):
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        # Contiguous chunks, put back in order: the files and ids do not depend on the number of workers.
        chunks = [(i, min(i + _CHUNK, count)) for i in range(0, count, _CHUNK)]
        if workers > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_write_images, [(spec, folder, offset, a, b) for a, b in chunks]))
        else:
            parts = [_write_images((spec, folder, offset, a, b)) for a, b in chunks]
        images, anns = [], []
        for part in parts:
            for image, instances in part:
                images.append(image)
                for ann in instances:
                    anns.append({"id": len(anns) + 1, "image_id": image["id"], **ann})
        data = {
            "info": {"description": f"opmask_fast synthetic shapes ({style.version})", "spec": spec_dict(spec),
                     "strong_categories": list(style.strong_classes), **style.info},
            "images": images, "annotations": anns, "categories": categories,
        }
        with open(dataset_paths(root)[f"{split}_ann"], "w") as f:
            json.dump(data, f)


_CHUNK = 50  # images per task when rendering in several processes


def _write_images(task: tuple[SyntheticSpec, str, int, int, int]) -> list[tuple[dict, list[dict]]]:
    """Renders images ``start..stop-1`` of a split into ``folder``: per image its COCO image entry and its annotations
    (without ids)."""
    spec, folder, offset, start, stop = task
    style = get_style(spec.style)
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng([spec.seed, offset, i])
        pixels, instances = style.render(rng, spec)
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(os.path.join(folder, file_name))
        image_id = i + 1
        image = {"id": image_id, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]}
        anns = []
        for cls, mask in instances:
            rle = mask_utils.encode(np.asfortranarray(mask))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"category_id": style.classes.index(cls) + 1, "iscrowd": 0, "bbox": [x, y, w, h],
                         "area": float(mask_utils.area(rle)), "segmentation": rle})
        out.append((image, anns))
    return out


# ---- rendering ------------------------------------------------------------------------------------------------------
def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
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


def polygon_mask(poly: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Binary ``[height, width]`` mask of a polygon given as (x, y) pixel coordinates."""
    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).polygon(poly, fill=1)
    return np.asarray(im, dtype=bool)


def _rgb(h: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360, sat, val)) * 255


def _texture(rng: np.random.Generator, cls: str, s: int, hue_jitter: float) -> np.ndarray:
    """An ``[s, s, 3]`` fill in the class hue: flat, stripes or checks in two shades, plus pixel noise."""
    hue = HUES[cls] + float(rng.uniform(-hue_jitter, hue_jitter))
    c1 = _rgb(hue, float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.6, 1.0)))
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
    base = _rgb(float(rng.uniform(0, 360)), float(rng.uniform(0, 0.2)), float(rng.uniform(0.25, 0.85)))
    coarse = rng.normal(0, 25, (8, 8, 1)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse[..., 0]).resize((s, s), Image.BILINEAR))[..., None]
    return np.clip(base + smooth + rng.normal(0, 8, (s, s, 3)), 0, 255)
