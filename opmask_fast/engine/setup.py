"""Shared pieces of the entry points: data paths, model configs from options, datasets, checkpoint -> model."""

from __future__ import annotations

import argparse
import ast
import logging
import math
import os
from collections.abc import Sequence

import torch

from ..data import CocoInstances, ResizeFlip, ensure_synthetic
from ..data.synthetic import dataset_spec, get_style
from .checkpoint import CheckpointError, check_model_checkpoint, load_checkpoint

logger = logging.getLogger(__name__)


def parse_prior_scale(text: str) -> str | float:
    """``none`` | ``learnable`` | ``feature_std`` | ``feature_range`` | a float gain."""
    from ..config import PRIOR_SCALE_MODES

    if text in PRIOR_SCALE_MODES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--prior-scale must be one of {', '.join(PRIOR_SCALE_MODES)} or a finite number, "
                         f"got {text!r}")
    return value


def apply_override(cfg, item: str) -> None:
    """Sets a (dotted) config field from ``KEY=VALUE``; the value is read as a Python literal when it is one."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like KEY=VALUE")
    key, text = item.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.strip().split(".")
    obj = cfg
    for name in parents:
        obj = getattr(obj, name, None)
        if obj is None:
            raise ValueError(f"unknown config section {name!r} in override {item!r}")
    if not hasattr(obj, leaf):
        raise ValueError(f"unknown config field {key!r}; fields here: {sorted(vars(obj))}")
    setattr(obj, leaf, _typed(value, getattr(obj, leaf), item, leaf))


def _typed(value, current, item: str, leaf: str):
    """``value`` converted to the type of the field's current value; a ValueError naming the override otherwise."""
    if leaf == "prior_scale":
        return parse_prior_scale(str(value))
    if current is None or hasattr(current, "__dataclass_fields__"):
        if current is not None:
            raise ValueError(f"override {item!r} names a config section, not a field")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok, value = number, float(value) if number else value
    elif isinstance(current, str):
        ok = isinstance(value, str)
    elif isinstance(current, tuple):
        if number:  # input.min_size_train=256 and =[256] mean (256,)
            value = [value]
        ok = isinstance(value, (list, tuple))
        if ok:
            value = tuple(_typed(v, current[0], item, "") for v in value) if current else tuple(value)
    else:
        ok = True
    if not ok:
        raise ValueError(f"override {item!r}: the field takes a {type(current).__name__} like {current!r}, "
                         f"got {value!r}")
    return value


def parse_image_counts(text: str) -> tuple[int, int]:
    """``N_TRAIN,N_VAL`` (positive integers): the image counts of a synthetic dataset (an argparse ``type``)."""
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 2 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive integers N_TRAIN,N_VAL, got {text!r}")
    return counts


def resolve_data(args, *, need_train: bool = True, need_val: bool = True) -> dict:
    """The annotation files and image folders to use: the ones given, or those of a synthetic dataset (``--dataset``,
    default the embedded one), generated into the cache on first use.

    Returns ``train_ann``, ``train_images``, ``val_ann``, ``val_images``, ``synthetic`` (bool), ``dataset`` (the
    synthetic dataset's name or None) and ``default_split`` (the synthetic dataset's strong classes; None for your own
    data, where ``checks.choose_split`` decides).
    """
    given = [getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")]
    dataset, counts = getattr(args, "dataset", None), getattr(args, "data_images", None)
    if any(given):
        if dataset or counts:
            raise ValueError("--dataset and --data-images choose a synthetic dataset: give them or your own files "
                             "(--train-ann ...), not both")
        want = (("train_ann", "train_images") if need_train else ()) + (("val_ann", "val_images") if need_val else ())
        missing = [k for k in want if not getattr(args, k, None)]
        if missing:
            raise ValueError(f"with your own data give all of {', '.join('--' + k.replace('_', '-') for k in want)}; "
                             f"missing: {', '.join('--' + k.replace('_', '-') for k in missing)}")
        paths = {k: getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        return {**paths, "synthetic": False, "dataset": None, "default_split": None}
    dataset = dataset or "shapes"
    num_train, num_val = counts or (None, None)
    spec = dataset_spec(dataset, seed=getattr(args, "data_seed", 0), num_train=num_train, num_val=num_val)
    # Absolute paths: the checkpoint's meta keeps them for evaluate, which may run from another folder.
    paths = {k: os.path.abspath(v) for k, v in ensure_synthetic(spec, getattr(args, "cache_dir", None)).items()}
    return {**paths, "synthetic": True, "dataset": dataset,
            "default_split": ",".join(get_style(spec.style).strong_classes)}


def train_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    transform = ResizeFlip(short_sides=input_cfg.min_size_train, max_side=input_cfg.max_size,
                           flip_prob=0.5 if input_cfg.random_flip else 0.0)
    return CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split=split,
                         split_seed=split_seed, transform=transform, masks="strong", filter_empty=True, coco=coco)


def val_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    transform = ResizeFlip(short_sides=(input_cfg.min_size_test,), max_side=input_cfg.max_size)
    return CocoInstances(ann_file=paths["val_ann"], image_dir=paths["val_images"], split=split, split_seed=split_seed,
                         transform=transform, masks="none", coco=coco)


def model_from_checkpoint(path: str, device: str | torch.device = "cpu", *, state: dict | None = None,
                          overrides: Sequence[str] = ()):
    """Rebuilds the model a checkpoint was trained with and loads its weights. Returns ``(model, meta)``.

    Args:
        state: the checkpoint's contents when already read (``checks.read_checkpoint``).
        overrides: ``KEY=VALUE`` changes of its model config (``apply_override``), e.g. test-time proposal counts.

    Raises:
        CheckpointError: not a checkpoint of ``opmask_fast.train``, or weights that do not fit its own config.
    """
    from ..config import ModelConfig
    from ..modeling.weights import WeightsMismatchError
    from .initial_weights import build_with_weights

    state = check_model_checkpoint(load_checkpoint(path) if state is None else state, path)
    meta = state["meta"]
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model config cannot be used: {e}") from None
    for item in overrides:
        apply_override(cfg, item)
    cfg.validate()
    cfg.backbone.weights = None  # the checkpoint holds every weight; the ImageNet file need not exist any more
    try:
        model = build_with_weights(cfg, state=state["model"], source=repr(path))
    except WeightsMismatchError as e:
        what = "its own model config" if not overrides else f"its model config with {', '.join(overrides)}"
        raise CheckpointError(f"{path}: its weights do not fit {what} ({e})") from None
    model.to(device).eval()
    return model, meta


def default_output_dir(name: str) -> str:
    return os.path.join("outputs", name)
