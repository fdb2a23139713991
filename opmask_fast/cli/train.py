"""Train OPMask (or its Mask R-CNN baseline), then evaluate.

With no arguments: generates the embedded synthetic dataset (once, into ~/.cache/opmask_fast), trains the lite OPMask
preset (the recommended recipe) on the CPU, evaluates on the synthetic validation set and prints the results. Multi-process training:
``torchrun --nproc_per_node N -m opmask_fast.train ...`` (gloo on the CPU, NCCL with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from ..data.loader import default_num_workers
from ..data.synthetic import DATASETS
from ..evaluation.metrics import RESULT_FILES, evaluate_model, format_table, log_evaluation, write_metrics
from ..training.distributed import barrier, run_in_process_group
from ..training.initial_weights import build_with_weights
from ..training.solver import get_solver_preset
from ..training.trainer import CHECKPOINT_NAME, train
from ..variants import VARIANTS
from . import errors
from . import preflight
from .options import parse_image_counts, resolve_data

logger = logging.getLogger("opmask_fast.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="opmask_r18_lite",
                   help="model preset (opmask_fast.config.PRESETS; default: the CPU model with the recommended recipe, "
                        "the feature-std prior at the mask head's resolution and the box projection term; "
                        "opmask_r18_lite_paper: the paper's)")
    m.add_argument("--variant", choices=list(VARIANTS), default=None,
                   help="a variant of the study (opmask_fast.variants) on top of the preset, e.g. opmask: the "
                        "paper recipe, baseline: the Mask R-CNN baseline")
    m.add_argument("--no-prior", action="store_true",
                   help="train the Mask R-CNN baseline (the variant 'baseline': no prior, no box-supervised mask term)")
    m.add_argument("--prior-scale", default=None,
                   help="how the prior is weighted: 'none' (the paper: added as is), 'learnable' (a learned gain), "
                        "'feature_std' / 'feature_range' (per RoI from its own mask features) or a fixed number; "
                        "default: the preset's")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. roi_heads.batch_size_per_image=64 (repeatable)")
    m.add_argument("--weights", default=None, metavar="FILE",
                   help="initial weights from a local file: ImageNet ResNet weights for the backbone (a torchvision state "
                        "dict: RGB input, stride in the 3x3 conv; detectron2 / MSRA R-50.pkl: BGR, stride in the 1x1 "
                        "conv; the model's pixel format follows the file) or a whole model (a checkpoint of this "
                        "command); anything else is an error")
    d = p.add_argument_group("data (default: the embedded synthetic dataset, generated on first use)")
    d.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                   help="synthetic dataset: shapes (the embedded one, default) or shapes2 (other rules)")
    d.add_argument("--data-images", type=parse_image_counts, default=None, metavar="N_TRAIN,N_VAL",
                   help="image counts of the synthetic dataset (default 1000,200)")
    d.add_argument("--train-ann", help="COCO instances JSON for training")
    d.add_argument("--train-images", help="image folder for training")
    d.add_argument("--val-ann", help="COCO instances JSON for evaluation")
    d.add_argument("--val-images", help="image folder for evaluation")
    d.add_argument("--split", default=None,
                   help="strong (mask-supervised) classes: voc, nonvoc, all, voc40, or names/ids separated by commas; "
                        "default: voc, or the synthetic dataset's strong classes")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the voc40 draw")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset")
    d.add_argument("--cache-dir", default=None, help="where the synthetic dataset is generated (~/.cache/opmask_fast)")
    t = p.add_argument_group("training (defaults: the preset's recipe, opmask_fast.training.solver.SOLVER_PRESETS: the "
                             "COCO presets train the paper's schedule, batch 16, LR 0.02, 1000 warm-up iterations, "
                             "130k iterations with a step at 120k; the tiny ones 800 iterations of 4 images)")
    t.add_argument("--iters", type=int, default=None,
                   help="iterations; alone it also moves the LR step to 5/6 of them and caps the warm-up at 1/10")
    t.add_argument("--batch-size", type=int, default=None,
                   help="images per iteration over all processes; the LR scales linearly with it "
                        "(lr = preset LR x batch size / preset batch size) unless --lr is given")
    t.add_argument("--lr", type=float, default=None, help="base learning rate (no batch-size scaling then)")
    t.add_argument("--steps", default=None, help="iterations where the LR drops x0.1, comma separated")
    t.add_argument("--warmup", type=int, default=None, help="linear warm-up iterations")
    t.add_argument("--clip", type=float, default=None, help="gradient clipping by value; 0 disables")
    t.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
    t.add_argument("--seed", type=int, default=0, help="seed of init, data order and augmentation")
    t.add_argument("--checkpoint-period", type=int, default=None, help="iterations between checkpoints")
    t.add_argument("--log-period", type=int, default=None, help="iterations between log lines")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pth")
    t.add_argument("--num-workers", type=_count, default=None,
                   help="data-loading processes per training process (default: 0 on the CPU, up to 4 on CUDA)")
    t.add_argument("--eval-period", type=_count, default=0, metavar="N",
                   help="also evaluate every N iterations during training (logged and in metrics.jsonl)")
    o = p.add_argument_group("run")
    o.add_argument("--output-dir", default=None, help="default: outputs/<preset>[_noprior][_<variant>][_<dataset>]")
    o.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    o.add_argument("--num-threads", type=int, default=None, help="torch CPU threads per process")
    o.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    o.add_argument("--eval-max-images", type=int, default=None, help="evaluate on the first N validation images only")
    o.add_argument("--visualize", type=int, default=0, metavar="N", help="write pictures of N validation images")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    errors.add_debug_option(p, o)
    return p


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


@errors.entry_point("python -m opmask_fast.train")
def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Options, files and given data are checked before any process group, model or training step.
    plan = preflight.check_train(args)
    return run_in_process_group(_run, args, plan)


def _run(args, info, plan) -> dict | None:
    # The model config and the --weights file were read by the checks, before the data.
    cfg, weights, tcfg = plan.model_config, plan.weights, plan.train_config
    need_val = not args.no_eval or args.eval_period > 0
    # Rank 0 generates the synthetic data first so the other processes find it complete.
    if info.is_main:
        paths = resolve_data(args, need_val=need_val)
    barrier()
    if not info.is_main:
        paths = resolve_data(args, need_val=need_val)
    data = plan.data or preflight.prepare_train_data(args, paths, cfg.input, need_val=need_val)
    train_set, split, val_set = data.train_set, data.split, data.val_set
    strong_ids = data.strong_ids  # the study split's, which the evaluation reports weak and strong metrics by
    tcfg.num_workers = args.num_workers if args.num_workers is not None else default_num_workers(
        info.device, processes_per_machine=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if not preflight.sets_num_classes(args):  # a --set one is checked against the data by check_run
        cfg.num_classes = len(train_set.category_ids)
    out = plan.output_dir
    preflight.check_run(cfg, train_set, os.path.join(out, CHECKPOINT_NAME) if args.resume else None, weights)
    if info.is_main and plan.resumed_at < tcfg.max_iter:
        # A new run in a folder of an earlier one, or a resumed run that trains on: the results of the earlier model
        # must not sit beside this one's checkpoint (a finished run resumed keeps them, its model being the same).
        for name in RESULT_FILES:
            if os.path.isfile(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    if info.is_main:
        logger.info("data: %s (%d training images; dropped: %s), strong: %s", paths["train_ann"], len(train_set),
                    train_set.dropped or "none",
                    ", ".join(n for i, n in zip(train_set.category_ids, train_set.category_names)
                              if i in train_set.strong_ids))
        logger.info("model: %s, prior %s; %d iterations x %d images, LR %g%s, warm-up %d, steps %s; output %s",
                    args.preset, f"on (scale {cfg.prior_scale})" if cfg.use_prior else "off", tcfg.max_iter,
                    tcfg.batch_size, tcfg.base_lr, _lr_note(args), tcfg.warmup_iters, list(tcfg.steps), out)
    torch.manual_seed(tcfg.seed)
    model = build_with_weights(cfg, weights)
    meta = {"model_config": cfg.to_dict(), "train_config": tcfg.to_dict(), "preset": args.preset, "split": split,
            "split_seed": args.split_seed, "train_split": None if data.train_split == split else data.train_split,
            "strong_ids": sorted(strong_ids), "category_ids": train_set.category_ids,
            "category_names": train_set.category_names, "data": {k: v for k, v in paths.items()}}

    def periodic(m, iteration: int) -> None:  # every process infers its share; rank 0 logs the metrics
        metrics = evaluate_model(m, val_set, strong_ids=strong_ids, device=info.device,
                                 max_images=args.eval_max_images)
        if metrics is not None:
            log_evaluation(os.path.join(out, "metrics.jsonl"), iteration, metrics)

    start = time.time()
    model = train(model, train_set, tcfg, output_dir=out, dist_info=info, resume=args.resume, meta=meta,
                  show_progress=not args.quiet, evaluate=periodic, eval_period=args.eval_period)
    train_seconds = plan.train_seconds + time.time() - start  # a resumed run: with the segments before
    metrics = None
    if info.is_main:
        logger.info("trained in %.0f s; checkpoint %s", train_seconds, os.path.join(out, CHECKPOINT_NAME))
    if not args.no_eval:  # every process infers its share of the validation images
        metrics = run_evaluation(model, val_set, args, out, info, strong_ids=strong_ids)
        if metrics is not None:
            metrics["train_seconds"] = train_seconds
            metrics["data_dropped"] = dict(train_set.dropped)  # per reason, see opmask_fast.data.sanitize
            metrics["val_data_dropped"] = dict(val_set.dropped)
            write_metrics(metrics, os.path.join(out, "metrics.json"))
            # A run resumed past --iters trains no further: its model is the checkpoint's.
            log_evaluation(os.path.join(out, "metrics.jsonl"), max(tcfg.max_iter, plan.resumed_at), metrics)
    barrier()
    return metrics


def run_evaluation(model, val_set, args, out, info, *, strong_ids) -> dict | None:
    """Evaluates on every process; prints, writes and returns the metrics on rank 0 (None elsewhere)."""
    start = time.time()
    metrics = evaluate_model(model, val_set, strong_ids=strong_ids, device=info.device, output_dir=out,
                             max_images=args.eval_max_images)
    if metrics is None:
        return None
    metrics["eval_seconds"] = time.time() - start
    print(f"\n{os.path.basename(os.path.normpath(out))}: {metrics['num_images']} validation images "
          f"({time.time() - start:.0f} s)")
    print(format_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')}, predictions: {os.path.join(out, 'predictions.json')}")
    if args.visualize:
        from ..analysis.pictures import visualize

        files = visualize(model, val_set, num_images=args.visualize, output_dir=os.path.join(out, "vis"),
                          strong_ids=strong_ids, device=info.device)
        print(f"pictures: {len(files)} in {os.path.join(out, 'vis')}")
    return metrics


def _lr_note(args) -> str:
    if args.batch_size is None or args.lr is not None:
        return ""
    preset = get_solver_preset(args.preset)
    return f" (= {preset.base_lr:g} x {args.batch_size} / {preset.batch_size}, scaled with --batch-size)"


if __name__ == "__main__":
    main()
