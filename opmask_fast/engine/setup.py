"""Shared pieces of the entry points: data paths, model configs from options, datasets, checkpoint -> model."""

from __future__ import annotations

import ast
import logging
import os

import torch

from ..data import CocoInstances, ResizeFlip, STRONG_CLASSES, SyntheticSpec, ensure_synthetic
from .checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


def parse_prior_scale(text: str) -> str | float:
    """``none`` | ``learnable`` | a float gain."""
    if text in ("none", "learnable"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--prior-scale must be 'none', 'learnable' or a number, got {text!r}") from None


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
    if isinstance(getattr(obj, leaf), tuple):
        # input.min_size_train=256 and =[256] mean (256,)
        value = tuple(value) if isinstance(value, list) else (value,) if isinstance(value, (int, float)) else value
    setattr(obj, leaf, value)


def resolve_data(args, *, need_train: bool = True) -> dict:
    """The annotation files and image folders to use: the ones given, or the embedded synthetic dataset's.

    Returns ``train_ann``, ``train_images``, ``val_ann``, ``val_images``, ``synthetic`` (bool) and ``default_split``.
    """
    given = [getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")]
    if any(given):
        want = ("train_ann", "train_images", "val_ann", "val_images") if need_train else ("val_ann", "val_images")
        missing = [k for k in want if not getattr(args, k, None)]
        if missing:
            raise ValueError(f"with your own data give all of {', '.join('--' + k.replace('_', '-') for k in want)}; "
                             f"missing: {', '.join('--' + k.replace('_', '-') for k in missing)}")
        paths = {k: getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        return {**paths, "synthetic": False, "default_split": "voc"}
    spec = SyntheticSpec(seed=getattr(args, "data_seed", 0))
    paths = ensure_synthetic(spec, getattr(args, "cache_dir", None))
    return {**paths, "synthetic": True, "default_split": ",".join(STRONG_CLASSES)}


def train_dataset(paths: dict, input_cfg, split, split_seed: int = 0) -> CocoInstances:
    transform = ResizeFlip(short_sides=input_cfg.min_size_train, max_side=input_cfg.max_size,
                           flip_prob=0.5 if input_cfg.random_flip else 0.0)
    return CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split=split,
                         split_seed=split_seed, transform=transform, masks="strong", filter_empty=True)


def val_dataset(paths: dict, input_cfg, split, split_seed: int = 0) -> CocoInstances:
    transform = ResizeFlip(short_sides=(input_cfg.min_size_test,), max_side=input_cfg.max_size)
    return CocoInstances(ann_file=paths["val_ann"], image_dir=paths["val_images"], split=split, split_seed=split_seed,
                         transform=transform, masks="none")


def model_from_checkpoint(path: str, device: str | torch.device = "cpu"):
    """Rebuilds the model a checkpoint was trained with and loads its weights. Returns ``(model, meta)``."""
    from ..config import ModelConfig
    from .initial_weights import build_with_weights

    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if "model_config" not in meta:
        raise ValueError(f"{path} has no model config: it was not written by opmask_fast.train")
    cfg = ModelConfig.from_dict(meta["model_config"])
    cfg.backbone.weights = None  # the checkpoint holds every weight; the ImageNet file need not exist any more
    model = build_with_weights(cfg, state=state["model"], source=repr(path))
    model.to(device).eval()
    return model, meta


def default_output_dir(name: str) -> str:
    return os.path.join("outputs", name)
