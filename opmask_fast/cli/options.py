"""Parsed command-line options -> configs and data paths: the one road from an option to the model and the run.

`model_config_from_args` (preset, --weights, --variant, --no-prior, --prior-scale, --set) and `train_config_from_args`
(the preset's solver recipe and the training options) are what train, compare's checks and preflight call; the
model itself is then built by `training.initial_weights.build_with_weights` -> `modeling.build_model`.
"""

from __future__ import annotations

import argparse
import os

from ..config import ModelConfig, apply_override, get_preset
from ..data import ensure_synthetic
from ..data.synthetic import dataset_spec, get_style
from ..ops.prior_weight import parse_prior_scale
from ..training.initial_weights import configure_weights
from ..training.solver import TrainConfig, get_solver_preset, scaled_lr
from ..variants import BASELINE, apply_variant


def model_config_from_args(args) -> tuple[ModelConfig, object]:
    """The preset, then the pixel format ``--weights`` asks for, then ``--variant``, ``--no-prior`` (the baseline
    variant), ``--prior-scale`` and ``--set`` (so an explicit ``--set`` wins). Returns ``(cfg, weights)`` with
    ``weights`` a `WeightsFile` or None; ``num_classes`` is the preset's until the dataset sets it."""
    cfg, weights = get_preset(args.preset), None
    if args.weights:
        cfg, weights = configure_weights(cfg, args.weights)
    if getattr(args, "variant", None):
        apply_variant(cfg, args.variant)
    if args.no_prior:
        apply_variant(cfg, BASELINE.name)
    if args.prior_scale is not None:
        cfg.prior_scale = parse_prior_scale(args.prior_scale, "--prior-scale")
    for item in args.set:
        apply_override(cfg, item)
    return cfg.validate(), weights


def train_config_from_args(args) -> TrainConfig:
    """The preset's solver recipe with the options given on top (see the help of the training options)."""
    preset, tc = get_solver_preset(args.preset), get_solver_preset(args.preset)
    tc.seed, tc.amp = args.seed, not args.no_amp
    if args.clip is not None:
        tc.clip_value = args.clip or None
    for name in ("checkpoint_period", "log_period"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    if args.iters is not None:
        tc.max_iter = args.iters
        tc.steps = (max(int(args.iters * 5 / 6), 1),)  # a step at 0 would train all of a 1-iteration run at 0.1 LR
        tc.warmup_iters = min(tc.warmup_iters, max(args.iters // 10, 1))
    if args.batch_size is not None:
        tc.batch_size = args.batch_size
        if args.lr is None:
            tc.base_lr = scaled_lr(preset, args.batch_size)
    if args.lr is not None:
        tc.base_lr = args.lr
    if args.steps is not None:
        tc.steps = tuple(int(s) for s in args.steps.split(",") if s.strip())
    if args.warmup is not None:
        tc.warmup_iters = args.warmup
    return tc.validate()


MAX_SYNTHETIC_IMAGES = 10**6  # per split: a typo beyond it would fill the disk (and memory) before any training


def parse_image_counts(text: str) -> tuple[int, int]:
    """``N_TRAIN,N_VAL`` (positive integers): the image counts of a synthetic dataset (an argparse ``type``)."""
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 2 or min(counts) < 1 or max(counts) > MAX_SYNTHETIC_IMAGES:
        raise argparse.ArgumentTypeError(f"expected two integers N_TRAIN,N_VAL in [1, {MAX_SYNTHETIC_IMAGES}], got "
                                         f"{text!r}")
    return counts


def resolve_data(args, *, need_train: bool = True, need_val: bool = True) -> dict:
    """The annotation files and image folders to use: the ones given, or those of a synthetic dataset (``--dataset``,
    default the embedded one), generated into the cache on first use.

    Returns ``train_ann``, ``train_images``, ``val_ann``, ``val_images``, ``synthetic`` (bool), ``dataset`` (the
    synthetic dataset's name or None) and ``default_split`` (the synthetic dataset's strong classes; None for your own
    data, where ``cli.checks.choose_split`` decides).
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
        # Absolute, as the synthetic dataset's: the checkpoint's meta keeps them for evaluate run from another folder.
        paths = {k: getattr(args, k, None) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        paths = {k: os.path.abspath(v) if v else v for k, v in paths.items()}
        return {**paths, "synthetic": False, "dataset": None, "default_split": None}
    dataset = dataset or "shapes"
    num_train, num_val = counts or (None, None)
    spec = dataset_spec(dataset, seed=getattr(args, "data_seed", 0), num_train=num_train, num_val=num_val)
    paths = {k: os.path.abspath(v) for k, v in ensure_synthetic(spec, getattr(args, "cache_dir", None)).items()}
    return {**paths, "synthetic": True, "dataset": dataset,
            "default_split": ",".join(get_style(spec.style).strong_classes)}


def default_output_dir(name: str) -> str:
    return os.path.join("outputs", name)
