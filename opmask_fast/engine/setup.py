"""Shared pieces of the entry points: data paths, model configs from options, datasets, checkpoint -> model."""

from __future__ import annotations

import ast
import logging
import math
import os

import torch

from ..data import CocoInstances, ResizeFlip, STRONG_CLASSES, SyntheticSpec, ensure_synthetic
from .checkpoint import CheckpointError, check_model_checkpoint, load_checkpoint

logger = logging.getLogger(__name__)


def parse_prior_scale(text: str) -> str | float:
    """``none`` | ``learnable`` | a float gain."""
    if text in ("none", "learnable"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--prior-scale must be 'none', 'learnable' or a finite number, got {text!r}")
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
        ok = isinstance(value, (list, tuple))
        if ok:
            value = tuple(_typed(v, current[0], item, "") for v in value) if current else tuple(value)
    else:
        ok = True
    if not ok:
        raise ValueError(f"override {item!r}: the field takes a {type(current).__name__} like {current!r}, "
                         f"got {value!r}")
    return value


def resolve_data(args, *, need_train: bool = True, need_val: bool = True) -> dict:
    """The annotation files and image folders to use: the ones given, or the embedded synthetic dataset's.

    Returns ``train_ann``, ``train_images``, ``val_ann``, ``val_images``, ``synthetic`` (bool) and ``default_split``
    (the synthetic dataset's strong classes; None for other data, where ``checks.choose_split`` decides).
    """
    given = [getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")]
    if any(given):
        want = (("train_ann", "train_images") if need_train else ()) + (("val_ann", "val_images") if need_val else ())
        missing = [k for k in want if not getattr(args, k, None)]
        if missing:
            raise ValueError(f"with your own data give all of {', '.join('--' + k.replace('_', '-') for k in want)}; "
                             f"missing: {', '.join('--' + k.replace('_', '-') for k in missing)}")
        paths = {k: getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        return {**paths, "synthetic": False, "default_split": None}
    spec = SyntheticSpec(seed=getattr(args, "data_seed", 0))
    paths = ensure_synthetic(spec, getattr(args, "cache_dir", None))
    return {**paths, "synthetic": True, "default_split": ",".join(STRONG_CLASSES)}


def train_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    transform = ResizeFlip(short_sides=input_cfg.min_size_train, max_side=input_cfg.max_size,
                           flip_prob=0.5 if input_cfg.random_flip else 0.0)
    return CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split=split,
                         split_seed=split_seed, transform=transform, masks="strong", filter_empty=True, coco=coco)


def val_dataset(paths: dict, input_cfg, split, split_seed: int = 0, *, coco=None) -> CocoInstances:
    transform = ResizeFlip(short_sides=(input_cfg.min_size_test,), max_side=input_cfg.max_size)
    return CocoInstances(ann_file=paths["val_ann"], image_dir=paths["val_images"], split=split, split_seed=split_seed,
                         transform=transform, masks="none", coco=coco)


def load_weights(model: torch.nn.Module, path: str, state: dict | None = None) -> None:
    """Initial weights: one of our checkpoints or a model state dict (tensors of another shape, e.g. a classifier for
    other classes, are skipped and logged), else ResNet weights for the backbone (see ``modeling.weights``).

    Args:
        state: the file's contents when already read (``checks.read_weights``).

    Raises:
        CheckpointError: the file shares no tensor with the model.
        WeightsMismatchError: ResNet weights that do not fit the backbone.
    """
    state = load_checkpoint(path) if state is None else state
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    target = model.state_dict()
    fits = {k: v for k, v in state.items() if k in target and torch.is_tensor(v) and v.shape == target[k].shape}
    if fits:
        other_shape = [k for k in state if k in target and k not in fits]
        missing = [k for k in target if k not in fits]
        model.load_state_dict(fits, strict=False)
        logger.info("weights %s: %d tensors loaded, %d of another shape skipped%s, %d model tensors not in the file%s",
                    path, len(fits), len(other_shape), f" (e.g. {other_shape[:3]})" if other_shape else "",
                    len(missing), f" (e.g. {missing[:3]})" if missing else "")
        return
    from ..modeling.weights import convert_to_torchvision_names

    renamed, fmt = convert_to_torchvision_names({k: v for k, v in state.items() if torch.is_tensor(v)})
    resnet_keys = set(model.backbone.bottom_up.state_dict())
    if any(k in resnet_keys for k in renamed):
        fmt = model.load_backbone_weights(path)
        logger.info("weights %s: ResNet backbone weights (%s format)", path, fmt)
        return
    keys = ", ".join(sorted(map(str, state))[:5])
    raise CheckpointError(f"{path} shares no tensor with the model: it is neither a checkpoint of opmask_fast nor a "
                          f"model state dict nor ResNet weights (its keys: {keys or 'none'})")


def model_from_checkpoint(path: str, device: str | torch.device = "cpu", *, state: dict | None = None):
    """Rebuilds the model a checkpoint was trained with and loads its weights. Returns ``(model, meta)``.

    Args:
        state: the checkpoint's contents when already read (``checks.read_checkpoint``).

    Raises:
        CheckpointError: not a checkpoint of ``opmask_fast.train``, or weights that do not fit its own config.
    """
    from ..config import ModelConfig, build_model

    state = check_model_checkpoint(load_checkpoint(path) if state is None else state, path)
    meta = state["meta"]
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model config cannot be used: {e}") from None
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise CheckpointError(f"{path}: its weights do not fit its own model config ({first[0].strip()})") from None
    model.to(device).eval()
    return model, meta


def default_output_dir(name: str) -> str:
    return os.path.join("outputs", name)
