"""Checks of the entry points' inputs, each failing with a one-line ``UsageError`` that names the option or file.

Options and devices, paths (all missing ones in one message), output folders, checkpoints (what a --weights file holds
is decided by ``training.initial_weights``), the
strong/weak split and the datasets. ``cli.preflight`` runs them for each command before any model is built.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from typing import Sequence

import torch

from .. import _extension
from ..analysis import CROP_SCAN_IMAGES
from ..data import CocoInstances, is_coco_categories
from ..data.sanitize import short_repr
from ..data.splits import VOC_SPLITS, quote_part, split_parts
from ..training.checkpoint import check_checkpoint_weights, check_model_checkpoint, load_checkpoint
from .errors import UsageError, option_name, user_errors

logger = logging.getLogger(__name__)


# --num-threads: far beyond any machine's cores; OpenMP fails on absurd counts (a segfault at 10**5)
MAX_THREADS = 1024


# ---- options ---------------------------------------------------------------------------------------------------------
def check_number(args, dest: str, *, minimum: float | None = None, positive: bool = False,
                 maximum: float | None = None) -> None:
    """``args.dest`` (skipped when absent or None) must be finite and within the bounds."""
    value = getattr(args, dest, None)
    if value is None:
        return
    bounds = []
    if positive:
        bounds.append("> 0")
    if minimum is not None:
        bounds.append(f">= {_number(minimum)}")
    if maximum is not None:
        bounds.append(f"<= {_number(maximum)}")
    # An int is finite at any size (math.isfinite would overflow converting one beyond a float's range).
    ok = (isinstance(value, int) or math.isfinite(value)) and (not positive or value > 0) and \
        (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise UsageError(f"{option_name(dest)} must be {' and '.join(bounds) or 'finite'}, got {short_repr(value)}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_device(text: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` of a GPU that exists."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")
        if _extension.cuda_missing():
            raise UsageError(f"--device {text}: opmask_fast._C was built without CUDA kernels (FORCE_CUDA=0 or no nvcc "
                             "at build time); rebuild it where nvcc is present (`pip install --no-build-isolation -e .`),"
                             f" or set {_extension.NO_EXTENSION_ENV}=1 to run the slow PyTorch references")
    return device


# ---- paths -----------------------------------------------------------------------------------------------------------
def check_paths(files: dict[str, str | None] = {}, folders: dict[str, str | None] = {}) -> None:
    """Every given file (option -> path) must be a file and every folder a folder; one message lists all problems."""
    problems = []
    for option, path in files.items():
        if path and not os.path.isfile(path):
            problems.append(f"{option} {path} " + ("is a folder, not a file" if os.path.isdir(path) else "not found"))
    for option, path in folders.items():
        if path and not os.path.isdir(path):
            problems.append(f"{option} {path} " + ("is a file, not a folder" if os.path.exists(path) else "not found"))
    if problems:
        raise UsageError("; ".join(problems))


def check_output_dir(path: str, option: str = "--output-dir") -> str:
    """Creates the folder (as the command would) and checks that it can be written to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{option} {path} cannot be created: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} is not writable")
    return path


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def read_checkpoint(path: str, option: str = "--checkpoint") -> dict:
    """A checkpoint written by ``opmask_fast.train`` (weights and the meta to rebuild its model)."""
    check_paths(files={option: path})
    with user_errors("" if option == "--checkpoint" else option):
        state = check_model_checkpoint(load_checkpoint(path), path)
        check_checkpoint_weights(state, path)
        return state


# ---- split -----------------------------------------------------------------------------------------------------------
def choose_split(split: str | None, categories: Sequence[dict], *, ann_file: str, default: str | None = None) -> str:
    """The ``--split`` to use on a dataset with ``categories``.

    Without ``--split``: ``default`` when given (the synthetic dataset's strong classes, a checkpoint's split), else
    ``voc`` when the categories are COCO's (by name), else a ``UsageError`` listing the dataset's categories. An empty
    split and the VOC splits on categories that are not COCO's are errors too.
    """
    names = ", ".join(str(c["name"]) for c in categories)
    if split is None:
        if default:
            return default
        if is_coco_categories(categories):
            logger.info("split: voc (the default on COCO's categories)")
            return "voc"
        raise UsageError(f"--split is required: the categories of {ann_file} are not COCO's, so the default 'voc' does "
                         f"not apply; name the strong (mask-supervised) classes, e.g. --split "
                         f"{shlex.quote(quote_part(str(categories[0]['name'])))} (categories: {names})")
    with user_errors("--split"):
        parts = split_parts(split)
    if not parts:
        raise UsageError(f"--split is empty; give voc, nonvoc, voc40, all or strong class names (categories of "
                         f"{ann_file}: {names})")
    if split.strip().lower() in VOC_SPLITS and not is_coco_categories(categories):
        raise UsageError(f"--split {split}: the VOC splits need COCO's categories, but {ann_file} has {names}; name the "
                         "strong classes instead")
    return split


class CategoryGroups:
    """The parts of a dataset ``check_groups`` reads, for a dataset not generated yet."""

    def __init__(self, cats: list[dict], strong: set, name: str) -> None:
        self.category_ids = [c["id"] for c in cats]
        self.category_names = [c["name"] for c in cats]
        self.strong_ids, self.weak_ids, self.ann_file = strong, set(self.category_ids) - strong, name


def check_groups(split: str, dataset: CocoInstances) -> None:
    """A training split needs a strong class, and a weak one unless it is ``all`` (full supervision, logged)."""
    names = dict(zip(dataset.category_ids, dataset.category_names))
    if not dataset.strong_ids:
        raise UsageError(f"--split {split!r} leaves no strong (mask-supervised) class in {dataset.ann_file}, so the mask "
                         f"head would never train; categories: {', '.join(names.values())}")
    if not dataset.weak_ids:
        if split.strip().lower() != "all":
            raise UsageError(f"--split {split!r} makes every category of {dataset.ann_file} strong and leaves no weak "
                             "(box-only) class for partial supervision; use --split all to train every class with masks")
        logger.info("split all: every class is strong (full mask supervision, no weak-class metrics)")


# ---- datasets --------------------------------------------------------------------------------------------------------
def images_read(max_images: int | None, visualize: int) -> int | None:
    """How many of the first validation images a run reads: ``max_images`` (None: all), the pictures of
    ``--visualize`` and the images its crops grid scans."""
    if max_images is None:
        return None
    return max(max_images, visualize, CROP_SCAN_IMAGES if visualize else 0)


def build_dataset(make, *, role: str, used: int | None = None) -> CocoInstances:
    """``make()`` (building the dataset) with its errors as usage errors, then reads every image header (an unreadable
    image or a size mismatch is found now, not in the middle of a run) and decodes the ``used`` first images (None:
    all) where they are few enough (`CocoInstances.verify_images`)."""
    with user_errors():
        dataset = make()
        dataset.verify_images(used=used)
    if len(dataset) == 0:
        what = "image with a usable annotation" if role == "training" else "image"
        raise UsageError(f"{dataset.ann_file} has no {what} ({role} data); dropped annotations: "
                         f"{dataset.dropped or 'none'}")
    return dataset


def check_supervision(split: str, dataset: CocoInstances) -> None:
    """What the training data gives each group: a strong-class instance with a usable mask (or the mask head would
    never train), and, unless ``split`` is ``all``, a weak class with a box (with none, every class that trains is
    strong: full supervision under another name). Strong classes without a usable mask and weak classes without a box
    are logged."""
    with_mask = {a["ann"]["category_id"] for r in dataset.records for a in r["anns"] if a["has_mask"]}
    present = {a["ann"]["category_id"] for r in dataset.records for a in r["anns"]}
    names = dict(zip(dataset.category_ids, dataset.category_names))
    if not with_mask:
        raise UsageError(f"no annotation of the strong classes ({', '.join(names[c] for c in sorted(dataset.strong_ids))})"
                         f" in {dataset.ann_file} has a usable mask, so the mask head would never train (masks "
                         f"dropped: {dataset.dropped or 'none'})")
    lacking = [names[c] for c in sorted((dataset.strong_ids & present) - with_mask)]
    if lacking:
        logger.warning("%s: strong classes whose instances have no usable mask (trained as box-only): %s",
                       dataset.ann_file, ", ".join(lacking))
    if not dataset.weak_ids:
        return  # --split all, checked by check_groups
    absent = [names[c] for c in sorted(dataset.weak_ids - present)]
    listed = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    if not dataset.weak_ids & present:
        raise UsageError(f"--split {split!r}: no weak (box-only) class has a usable annotation in {dataset.ann_file} "
                         f"({listed}; dropped: {dataset.dropped or 'none'}), so nothing would be partially supervised; "
                         "choose a split that leaves a weak class with boxes, or --split all for full supervision")
    if absent:
        logger.warning("%s: weak classes without any training annotation (never detected): %s", dataset.ann_file,
                       listed)


def check_same_categories(a: CocoInstances, b_ids: list[int], b_names: list[str], b_source: str) -> None:
    """The categories of dataset ``a`` must be those of ``b`` (the training data or a checkpoint)."""
    if a.category_ids != list(b_ids) or [n.lower() for n in a.category_names] != [n.lower() for n in b_names]:
        ours = dict(zip(a.category_ids, a.category_names))
        theirs = dict(zip(b_ids, b_names))
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:6]
        raise UsageError(f"the categories of {a.ann_file} differ from those of {b_source} ({len(ours)} vs "
                         f"{len(theirs)}; e.g. {', '.join(f'{i}: {n}' for i, n in diff)})")
