"""What each command checks before it builds a model or spends a training step (see ``cli.checks``).

Every function raises ``cli.UsageError`` (one line, exit code 2 at the command line) naming the option, file or
annotation at fault, and returns what it read so that nothing is read twice.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

from ..config import ModelConfig
from ..data import CocoInstances, load_coco, resolve_split, train_dataset, val_dataset
from ..data.synthetic import DATASETS, default_cache_root, get_style
from ..modeling.weights import read_model_state
from ..training.checkpoint import train_seconds
from ..training.initial_weights import check_model_weights
from ..training.solver import TrainConfig
from ..variants import get_variant
from .checks import (MAX_THREADS, CategoryGroups, build_dataset, check_device, check_groups, check_number,
                     check_output_dir, check_paths, check_same_categories, check_supervision, choose_split,
                     images_read, read_checkpoint)
from .errors import UsageError, user_errors
from .options import default_output_dir, model_config_from_args, resolve_data, train_config_from_args

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1

DATA_OPTIONS = {"train_ann": "--train-ann", "train_images": "--train-images", "val_ann": "--val-ann",
                "val_images": "--val-images"}


@dataclass
class TrainData:
    train_set: CocoInstances
    val_set: CocoInstances | None  # None with --no-eval and no --eval-period
    split: str  # the study's split: the evaluation's strong classes
    train_split: str  # the training's strong classes (the split, or a variant's own, e.g. all)
    strong_ids: set  # the split's strong category ids


@dataclass
class TrainPlan:
    output_dir: str
    model_config: object  # ModelConfig of the options and --weights (num_classes set once the data is read)
    train_config: object  # TrainConfig
    weights: object = None  # modeling.weights.WeightsFile of --weights, or None
    data: TrainData | None = None  # user data, checked; None: a synthetic dataset, prepared after its generation
    resumed_at: int = 0  # the iteration of the checkpoint --resume continues (0: a new run)
    train_seconds: float = 0.0  # the wall seconds of training up to that checkpoint


def check_train_options(args) -> tuple:
    """Options and the ``--weights`` file: numbers, --steps, --preset, --prior-scale, --set, then what --weights holds
    (``training.initial_weights.configure_weights``, the file read once). Returns ``(model_config, weights,
    train_config)`` as ``cli.options`` builds them."""
    for dest in ("iters", "batch_size", "checkpoint_period", "log_period", "eval_max_images"):
        check_number(args, dest, minimum=1)
    check_number(args, "num_threads", minimum=1, maximum=MAX_THREADS)
    for dest in ("warmup", "visualize", "num_workers", "eval_period", "clip"):
        check_number(args, dest, minimum=0)
    for dest in ("seed", "data_seed", "split_seed"):  # at most 2^32 - 1: numpy and the data sampler take no more
        check_number(args, dest, minimum=0, maximum=MAX_SEED)
    check_number(args, "lr", positive=True)
    steps = getattr(args, "steps", None)
    if steps is not None:
        parts = [p.strip() for p in steps.split(",") if p.strip()]
        if not all(p.isascii() and p.isdigit() and int(p) >= 1 for p in parts):  # "²".isdigit() is True
            raise UsageError(f"--steps must be iterations (integers >= 1) separated by commas, got {steps!r}")
    weights_file = getattr(args, "weights", None)
    with user_errors():
        tcfg = train_config_from_args(args)
        if not weights_file:
            cfg, weights = model_config_from_args(args)
            return cfg, weights, tcfg
        model_config_from_args(argparse.Namespace(**{**vars(args), "weights": None}))  # every option but --weights
    check_paths(files={"--weights": weights_file})
    with user_errors("--weights"):  # what the file is: backbone weights, a whole model, or an error
        cfg, weights = model_config_from_args(args)
    return cfg, weights, tcfg


def sets_num_classes(args) -> bool:
    """Whether ``--set num_classes=...`` was given (``check_run`` then checks it against the data)."""
    return any(item.split("=", 1)[0].strip() == "num_classes" for item in getattr(args, "set", None) or ())


def _synthetic_name(args) -> str:
    return getattr(args, "dataset", None) or "shapes"


def check_train(args) -> TrainPlan:
    """Everything ``opmask_fast.train`` needs: options, --weights, device, output folder, --resume, data and split."""
    cfg, weights, tcfg = check_train_options(args)
    device = check_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sync_bn = [k for k, v in (("backbone.norm", cfg.backbone.norm), ("roi_heads.box_head_norm",
                              cfg.roi_heads.box_head_norm), ("roi_heads.mask_head_norm",
                              cfg.roi_heads.mask_head_norm)) if v == "SyncBN"]
    if sync_bn and device.type != "cuda" and world > 1:  # one process: SyncBatchNorm is BatchNorm, on any device
        raise UsageError(f"{', '.join(sync_bn)}=SyncBN across {world} processes needs CUDA (torch's SyncBatchNorm "
                         "syncs on GPUs only); use BN or GN on the CPU")
    # The mask head (and a prior head of its own, with the box head's norm) runs on the step's mask RoIs: a process
    # with none skips it, and the others would wait for it in SyncBatchNorm's collective for ever.
    skipped = [k for k in sync_bn if k == "roi_heads.mask_head_norm" or
               (k == "roi_heads.box_head_norm" and cfg.use_prior and cfg.prior_convs == "separate")]
    if skipped and world > 1:
        raise UsageError(f"{', '.join(skipped)}=SyncBN across {world} processes: a process whose batch has no mask "
                         "RoI skips the mask branch's heads while the others wait for it in SyncBatchNorm; use BN or "
                         "GN there (SyncBN in the backbone is fine)")
    if tcfg.batch_size % world:
        raise UsageError(f"--batch-size {tcfg.batch_size} is not divisible by the {world} processes")
    # A run of another model or dataset gets its own default folder (not the default recipe's run overwritten).
    other_data = "" if _synthetic_name(args) == "shapes" else f"_{args.dataset}"
    variant = f"_{args.variant}" if getattr(args, "variant", None) else ""
    out = check_output_dir(args.output_dir or default_output_dir(
        args.preset + ("_noprior" if args.no_prior else "") + variant + other_data))
    ckpt = os.path.join(out, "checkpoint.pth")
    if os.path.isdir(ckpt):  # found at the first save, after the work
        raise UsageError(f"--output-dir {out}: its checkpoint.pth is a folder")
    resumed_at, seconds = 0, 0.0
    if getattr(args, "resume", False) and os.path.isfile(ckpt):
        state = read_checkpoint(ckpt, "--resume")
        lost = [k for k in ("optimizer", "scheduler", "iteration") if k not in state]
        if not lost and not (isinstance(state["iteration"], int) and state["iteration"] >= 0):
            lost = ["valid iteration"]
        if lost:
            raise UsageError(f"--resume: {ckpt} holds no training state to continue (no {', '.join(lost)}): a "
                             "model-only file; give it as --weights instead")
        check_resumed_solver(state, tcfg, ckpt)
        resumed_at = state["iteration"]
        seconds = train_seconds(state)
    plan = TrainPlan(output_dir=out, model_config=cfg, train_config=tcfg, weights=weights, resumed_at=resumed_at,
                     train_seconds=seconds)
    need_val = not args.no_eval or (getattr(args, "eval_period", 0) or 0) > 0
    if any(getattr(args, k, None) for k in DATA_OPTIONS):
        with user_errors():
            paths = resolve_data(args, need_val=need_val)
        check_paths(files={DATA_OPTIONS[k]: paths[k] for k in ("train_ann", "val_ann")},
                    folders={DATA_OPTIONS[k]: paths[k] for k in ("train_images", "val_images")})
        plan.data = prepare_train_data(args, paths, cfg.input, need_val=need_val)
    else:
        check_output_dir(args.cache_dir or default_cache_root(), "--cache-dir")
        check_synthetic(args, cfg)
    return plan


# What a resumed run takes from its checkpoint whatever the options say: the optimizer's and scheduler's state hold
# the learning rate and decay, and the data order follows the seed and batch size. Others (--iters, --steps, --warmup,
# --clip, periods) apply to the rest of the run.
RESUME_KEEPS = ("base_lr", "momentum", "weight_decay", "weight_decay_norm", "batch_size", "seed")


def check_resumed_solver(state: dict, tcfg, path: str) -> None:
    """``--resume`` with the training options the run was started with, where the checkpoint's state wins."""
    stored = (state.get("meta") or {}).get("train_config")
    if not isinstance(stored, dict):
        return
    theirs = TrainConfig.from_dict(stored)
    diff = [k for k in RESUME_KEEPS if getattr(theirs, k) != getattr(tcfg, k)]
    if diff:
        raise UsageError(f"--resume: {path} was trained with " + ", ".join(f"{k}={getattr(theirs, k)}" for k in diff) +
                         " (now " + ", ".join(f"{k}={getattr(tcfg, k)}" for k in diff) + "), which a resumed run keeps "
                         "from its checkpoint; give the same options, or another --output-dir")


def check_num_classes(cfg, count: int, source: str) -> None:
    """The model's class count is the data's (``source`` names the data)."""
    if cfg.num_classes != count:
        raise UsageError(f"the model has num_classes={cfg.num_classes} but {source} has {count} categories; "
                         "num_classes comes from the data, do not --set it")


def check_synthetic(args, cfg) -> None:
    """The split and a ``--set num_classes`` against the synthetic dataset ``args.dataset``, which is generated later
    (once): its categories are known now."""
    name = _synthetic_name(args)
    style = get_style(DATASETS[name].style)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(style.classes)]
    what = f"the synthetic dataset {name}"
    if sets_num_classes(args):
        check_num_classes(cfg, len(cats), what)
    split = choose_split(args.split, cats, ann_file=what, default=",".join(style.strong_classes))
    with user_errors():
        strong = resolve_split(split, cats, seed=args.split_seed)
    check_groups(split, CategoryGroups(cats, strong, what))


def prepare_train_data(args, paths: dict, input_cfg, *, need_val: bool = True) -> TrainData:
    """Loads and checks the training (and, with ``need_val``, validation) data: annotations, images, split, categories,
    masks. ``input_cfg``: the model config's ``input`` (image sizes)."""
    with user_errors():
        coco = load_coco(paths["train_ann"])
    split = choose_split(args.split, coco.dataset["categories"], ann_file=paths["train_ann"],
                         default=paths.get("default_split"))
    # A variant with its own training split (upper_bound: all) is still evaluated on the study's split.
    variant = getattr(args, "variant", None)
    train_split = (get_variant(variant).train_split if variant else None) or split
    with user_errors():
        strong_ids = resolve_split(split, coco.dataset["categories"], seed=args.split_seed)
    train_set = build_dataset(lambda: train_dataset(paths, input_cfg, train_split, args.split_seed, coco=coco),
                              role="training")
    check_groups(train_split, train_set)
    check_supervision(train_split, train_set)
    val_set = None
    if need_val:
        with user_errors():
            val_coco = load_coco(paths["val_ann"])
        cats = sorted(val_coco.dataset["categories"], key=lambda c: c["id"])
        check_same_categories(CategoryGroups(cats, set(), paths["val_ann"]), train_set.category_ids,
                              train_set.category_names, paths["train_ann"])
        val_set = build_dataset(lambda: val_dataset(paths, input_cfg, split, args.split_seed, coco=val_coco),
                                role="validation", used=images_read(getattr(args, "eval_max_images", None),
                                                                    getattr(args, "visualize", 0)))
    return TrainData(train_set=train_set, val_set=val_set, split=split, train_split=train_split,
                     strong_ids=strong_ids)


def check_run(cfg, train_set: CocoInstances, resume: str | None, weights=None) -> None:
    """The model config fits the data (``num_classes``), a whole model's ``--weights`` (``weights``, a `WeightsFile`)
    fit the model, and ``--resume`` continues a run of the same config and categories (``resume``: the checkpoint
    path, None without --resume)."""
    check_num_classes(cfg, len(train_set.category_ids), train_set.ann_file)
    if weights is not None and weights.kind != "backbone":
        with user_errors("--weights"):  # e.g. a checkpoint of other classes or of a model without the prior
            check_model_weights(cfg, read_model_state(weights.path), source=repr(weights.path))
    if not resume or not os.path.isfile(resume):
        return
    meta = read_checkpoint(resume, "--resume")["meta"]
    if list(meta["category_ids"]) != list(train_set.category_ids):
        raise UsageError(f"--resume: {resume} was trained on other categories ({len(meta['category_ids'])} vs "
                         f"{len(train_set.category_ids)}); use another --output-dir or drop --resume")
    with user_errors(f"--resume: {resume}"):
        theirs = ModelConfig.from_dict(meta["model_config"]).to_dict()
    ours = cfg.to_dict()
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise UsageError(f"--resume: {resume} was trained with another model config (differs in {', '.join(diff)}); use "
                         "another --output-dir or drop --resume")
