"""Train OPMask (or its Mask R-CNN baseline), then evaluate.

With no arguments: generates the embedded synthetic dataset (once, into ~/.cache/opmask_fast), trains the tiny OPMask
preset on the CPU, evaluates on the synthetic validation set and prints the results. Multi-process training:
``torchrun --nproc_per_node N -m opmask_fast.train ...`` (gloo on the CPU, NCCL with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from . import cli
from .engine import preflight
from .engine.distributed import barrier, cleanup, init_distributed
from .engine.evaluation import evaluate_model, format_table, write_metrics
from .engine.setup import apply_override, load_weights, parse_prior_scale, resolve_data, val_dataset
from .engine.solver import TrainConfig
from .engine.trainer import CHECKPOINT_NAME, train

logger = logging.getLogger("opmask_fast.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="opmask_r18_tiny", help="model preset (opmask_fast.config.PRESETS)")
    m.add_argument("--no-prior", action="store_true", help="train the Mask R-CNN baseline (no prior added)")
    m.add_argument("--prior-scale", default=None,
                   help="how the prior is weighted: 'none' (the paper: added as is), 'learnable' (a learned gain) or a "
                        "fixed number; default: the preset's")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. roi_heads.batch_size_per_image=64 (repeatable)")
    m.add_argument("--weights", default=None, help="initial weights: a checkpoint or a state dict (.pth)")
    d = p.add_argument_group("data (default: the embedded synthetic dataset)")
    d.add_argument("--train-ann", help="COCO instances JSON for training")
    d.add_argument("--train-images", help="image folder for training")
    d.add_argument("--val-ann", help="COCO instances JSON for evaluation")
    d.add_argument("--val-images", help="image folder for evaluation")
    d.add_argument("--split", default=None,
                   help="strong (mask-supervised) classes: voc, nonvoc, all, voc40, or names/ids separated by commas; "
                        "default: voc, or circle,triangle,cross on the synthetic dataset")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the voc40 draw")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset")
    d.add_argument("--cache-dir", default=None, help="where the synthetic dataset is generated (~/.cache/opmask_fast)")
    t = p.add_argument_group("training")
    t.add_argument("--iters", type=int, default=None, help="iterations (default 800)")
    t.add_argument("--batch-size", type=int, default=None, help="images per iteration over all processes (default 4)")
    t.add_argument("--lr", type=float, default=None, help="base learning rate (default 0.02)")
    t.add_argument("--steps", default=None, help="iterations where the LR drops x0.1, comma separated (default: 5/6 of "
                                                 "--iters)")
    t.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 100)")
    t.add_argument("--clip", type=float, default=1.0, help="gradient clipping by value; 0 disables (default 1.0)")
    t.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
    t.add_argument("--seed", type=int, default=0, help="seed of init, data order and augmentation")
    t.add_argument("--checkpoint-period", type=int, default=500)
    t.add_argument("--log-period", type=int, default=20)
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pth")
    o = p.add_argument_group("run")
    o.add_argument("--output-dir", default=None, help="default: outputs/<preset>[_noprior]")
    o.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    o.add_argument("--num-threads", type=int, default=None, help="torch CPU threads per process")
    o.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    o.add_argument("--eval-max-images", type=int, default=None, help="evaluate on the first N validation images only")
    o.add_argument("--visualize", type=int, default=0, metavar="N", help="write pictures of N validation images")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug_option(p, o)
    return p


def model_config_from_args(args, num_classes: int):
    from .config import get_preset

    cfg = get_preset(args.preset)
    cfg.num_classes = num_classes
    if args.no_prior:
        cfg.use_prior = False
    if args.prior_scale is not None:
        cfg.prior_scale = parse_prior_scale(args.prior_scale)
    for item in args.set:
        apply_override(cfg, item)
    return cfg.validate()


def train_config_from_args(args) -> TrainConfig:
    tc = TrainConfig(seed=args.seed, checkpoint_period=args.checkpoint_period, log_period=args.log_period,
                     clip_value=args.clip or None, amp=not args.no_amp)
    if args.iters is not None:
        tc.max_iter = args.iters
        tc.steps = (int(args.iters * 5 / 6),)
        tc.warmup_iters = min(tc.warmup_iters, max(args.iters // 10, 1))
    if args.batch_size is not None:
        tc.batch_size = args.batch_size
    if args.lr is not None:
        tc.base_lr = args.lr
    if args.steps is not None:
        tc.steps = tuple(int(s) for s in args.steps.split(",") if s.strip())
    if args.warmup is not None:
        tc.warmup_iters = args.warmup
    return tc.validate()


@cli.entry_point("python -m opmask_fast.train")
def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Options, files and given data are checked before any process group, model or training step.
    plan = preflight.check_train(args, train_config=train_config_from_args, model_config=model_config_from_args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    info = init_distributed(args.device)
    try:
        return _run(args, info, plan)
    finally:
        cleanup()


def _run(args, info, plan) -> dict | None:
    from .config import build_model, get_preset

    # Rank 0 generates the synthetic data first so the other processes find it complete.
    if info.is_main:
        paths = resolve_data(args)
    barrier()
    if not info.is_main:
        paths = resolve_data(args)
    data = plan.data or preflight.prepare_train_data(args, paths)
    train_set, split = data.train_set, data.split
    tcfg = train_config_from_args(args)
    input_cfg = get_preset(args.preset).input  # the preset keeps image sizes next to the anchors that fit them
    cfg = model_config_from_args(args, len(train_set.category_ids))
    out = plan.output_dir
    preflight.check_run(cfg, train_set, os.path.join(out, CHECKPOINT_NAME) if args.resume else None)
    if info.is_main:
        logger.info("data: %s (%d training images; dropped: %s), strong: %s", paths["train_ann"], len(train_set),
                    train_set.dropped or "none",
                    ", ".join(n for i, n in zip(train_set.category_ids, train_set.category_names)
                              if i in train_set.strong_ids))
        logger.info("model: %s, prior %s; %d iterations x %d images; output %s", args.preset,
                    f"on (scale {cfg.prior_scale})" if cfg.use_prior else "off", tcfg.max_iter, tcfg.batch_size, out)
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg)
    if args.weights:
        with cli.user_errors("--weights"):
            load_weights(model, args.weights, plan.weights)
    meta = {"model_config": cfg.to_dict(), "train_config": tcfg.to_dict(), "preset": args.preset, "split": split,
            "split_seed": args.split_seed,
            "strong_ids": sorted(train_set.strong_ids), "category_ids": train_set.category_ids,
            "category_names": train_set.category_names, "data": {k: v for k, v in paths.items()}}
    start = time.time()
    model = train(model, train_set, tcfg, output_dir=out, dist_info=info, resume=args.resume, meta=meta,
                  show_progress=not args.quiet)
    train_seconds = time.time() - start
    metrics = None
    if info.is_main:
        logger.info("trained in %.0f s; checkpoint %s", train_seconds, os.path.join(out, CHECKPOINT_NAME))
        if not args.no_eval:
            metrics = run_evaluation(model, paths, input_cfg, split, args, out, info.device,
                                     strong_ids=train_set.strong_ids, val_set=data.val_set)
            metrics["train_seconds"] = train_seconds
            metrics["data_dropped"] = dict(train_set.dropped)  # per reason, see opmask_fast.data.sanitize
            metrics["val_data_dropped"] = dict(data.val_set.dropped)
            write_metrics(metrics, os.path.join(out, "metrics.json"))
    barrier()
    return metrics


def run_evaluation(model, paths, input_cfg, split, args, out, device, *, strong_ids, val_set=None) -> dict:
    if val_set is None:
        val_set = val_dataset(paths, input_cfg, split, getattr(args, "split_seed", 0))
    start = time.time()
    metrics = evaluate_model(model, val_set, strong_ids=strong_ids, device=device, output_dir=out,
                             max_images=args.eval_max_images)
    metrics["eval_seconds"] = time.time() - start
    print(f"\n{os.path.basename(os.path.normpath(out))}: {metrics['num_images']} validation images "
          f"({time.time() - start:.0f} s)")
    print(format_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')}, predictions: {os.path.join(out, 'predictions.json')}")
    if args.visualize:
        from .engine.visualize import visualize

        files = visualize(model, val_set, num_images=args.visualize, output_dir=os.path.join(out, "vis"),
                          strong_ids=strong_ids, device=device)
        print(f"pictures: {len(files)} in {os.path.join(out, 'vis')}")
    return metrics


if __name__ == "__main__":
    main()
