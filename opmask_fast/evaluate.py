"""Evaluate a trained checkpoint: COCO box/mask AP, strong/weak, ambiguous vs other, prior AP, oracle-box mIoU.

``python -m opmask_fast.evaluate --checkpoint outputs/opmask_r18_tiny/checkpoint.pth`` evaluates on the validation data
the checkpoint was trained with (or ``--val-ann``/``--val-images``) and writes ``metrics.json``, ``predictions.json``
(COCO results format) and ``prior_predictions.json`` into ``--output-dir`` (default: the checkpoint's folder).
Under ``torchrun --nproc_per_node N`` each process infers 1/N of the images and rank 0 computes the metrics.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from .engine.distributed import cleanup, init_distributed
from .engine.evaluation import METRIC_KEYS, evaluate_model, format_table
from .engine.setup import model_from_checkpoint, val_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pth written by opmask_fast.train")
    p.add_argument("--val-ann", help="COCO instances JSON (default: the one used at training)")
    p.add_argument("--val-images", help="image folder (default: the one used at training)")
    p.add_argument("--split", default=None, help="strong classes (default: the training split)")
    p.add_argument("--output-dir", default=None, help="default: the checkpoint's folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle-box mask IoU pass")
    p.add_argument("--prior-ablation", choices=("zero", "shuffle"), default=None,
                   help="diagnostic: evaluate with the prior set to 0, or with each RoI given another RoI's prior "
                        "(the priors reported for prior AP stay the model's own); metrics go to "
                        "OUTPUT_DIR/ablation_<mode>/ unless --output-dir is given")
    p.add_argument("--visualize", type=int, default=0, metavar="N", help="write pictures of N images")
    p.add_argument("--list-metrics", action="store_true", help="print the metrics.json keys and their meaning")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if args.list_metrics:
        for k, v in METRIC_KEYS.items():
            print(f"{k:<26} {v}")
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    info = init_distributed(args.device)
    try:
        return _evaluate(args, info)
    finally:
        cleanup()


def _evaluate(args, info) -> dict | None:
    model, meta = model_from_checkpoint(args.checkpoint, info.device)
    from .config import ModelConfig

    cfg = ModelConfig.from_dict(meta["model_config"])
    data = dict(meta.get("data", {}))
    if args.val_ann or args.val_images:
        if not (args.val_ann and args.val_images):
            raise ValueError("give both --val-ann and --val-images")
        data.update(val_ann=args.val_ann, val_images=args.val_images)
    if not data.get("val_ann"):
        raise ValueError("the checkpoint names no validation data: give --val-ann and --val-images")
    split = args.split or meta.get("split")
    dataset = val_dataset(data, cfg.input, split)
    if dataset.category_ids != list(meta.get("category_ids", dataset.category_ids)):
        raise ValueError(f"the categories of {data['val_ann']} differ from the checkpoint's "
                         f"{meta.get('category_names')}")
    out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    if args.prior_ablation:
        if not cfg.use_prior:
            raise ValueError(f"--prior-ablation needs a model with a prior; {args.checkpoint} is the baseline")
        model.roi_heads.prior_ablation = args.prior_ablation
        if not args.output_dir:
            out = os.path.join(out, f"ablation_{args.prior_ablation}")
    start = time.time()
    metrics = evaluate_model(model, dataset, strong_ids=dataset.strong_ids, device=info.device, output_dir=out,
                             oracle=not args.no_oracle, max_images=args.max_images)
    if metrics is None:  # not rank 0
        return None
    print(f"{metrics['num_images']} images in {time.time() - start:.0f} s")
    print(format_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')}")
    if args.visualize:
        from .engine.visualize import visualize

        files = visualize(model, dataset, num_images=args.visualize, output_dir=os.path.join(out, "vis"),
                          strong_ids=dataset.strong_ids, device=info.device)
        print(f"pictures: {len(files)} in {os.path.join(out, 'vis')}")
    return metrics


if __name__ == "__main__":
    main()
