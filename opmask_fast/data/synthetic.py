"""The synthetic datasets in COCO format: specs, named datasets, generation into a cache folder.

Two generators (styles): ``synthetic_shapes`` (the embedded dataset, built to show the failure mode of partial
supervision) and ``synthetic_shapes2`` (other rules, to check that a result is not tuned to the first's).
``SyntheticSpec.style`` picks one and ``DATASETS`` holds the named defaults. The data is a pure function of the seed
(``numpy.random.Generator`` per image), written once into a cache folder as PNG files plus
``annotations/instances_{train,val}.json`` (masks: compressed RLE of the visible part; boxes from the masks).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from . import synthetic_shapes as s1
from . import synthetic_shapes2 as s2
from .synthetic_shapes import CLASSES, STRONG_CLASSES, WEAK_CLASSES  # the embedded set's classes

__all__ = ["CLASSES", "DATASETS", "STRONG_CLASSES", "STYLES", "WEAK_CLASSES", "SyntheticSpec", "dataset_spec",
           "default_cache_root", "ensure_synthetic", "get_style"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every field is part of the cache key."""

    seed: int = 0
    num_train: int = 1000
    num_val: int = 200
    image_size: int = 128
    hue_jitter: float = 15.0  # degrees; small jitter keeps colours class-typical
    min_visible: float = 0.25  # drop instances with less of their shape visible
    style: str = "shapes"  # the generator: "shapes" (synthetic_shapes) or "shapes2" (synthetic_shapes2)

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
        return Style(s1.VERSION, s1.CLASSES, s1.STRONG_CLASSES, s1.render_image, {})
    if name == "shapes2":
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
