"""Evaluate a trained checkpoint: COCO box/mask AP, strong/weak, ambiguous vs other, prior AP, oracle-box mIoU.

``python -m opmask_fast.evaluate --checkpoint outputs/opmask_r18_lite/checkpoint.pth`` evaluates on the validation data
the checkpoint was trained with (or ``--val-ann``/``--val-images``) and writes ``metrics.json``, ``predictions.json``
(COCO results format) and ``prior_predictions.json`` into ``--output-dir`` (default: the checkpoint's folder).
Under ``torchrun --nproc_per_node N`` each process infers 1/N of the images and rank 0 computes the metrics.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from ..analysis.pictures import visualize
from ..evaluation.metrics import COMMAND_KEYS, METRIC_KEYS, evaluate_model, format_table, write_metrics
from ..modeling.roi_heads.prior import ABLATIONS, prior_ablation
from ..training.checkpoint import model_from_checkpoint
from ..training.distributed import run_in_process_group
from . import errors, preflight_inference


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # Required but for --list-metrics (checked in main).
    p.add_argument("--checkpoint", default=None, help="checkpoint.pth written by opmask_fast.train (required)")
    p.add_argument("--val-ann", help="COCO instances JSON (default: the one used at training)")
    p.add_argument("--val-images", help="image folder (default: the one used at training)")
    p.add_argument("--split", default=None, help="strong classes (default: the training split)")
    p.add_argument("--output-dir", default=None, help="default: the checkpoint's folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle-box mask IoU pass")
    p.add_argument("--prior-ablation", choices=ABLATIONS, default=None,
                   help="diagnostic: evaluate with the prior set to 0, or with each RoI given another RoI's prior "
                        "(the priors reported for prior AP stay the model's own); metrics go to "
                        "<checkpoint folder>/ablation_<mode>/, or to --output-dir when given")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a field of the checkpoint's model config for this evaluation, e.g. "
                        "rpn.post_nms_topk_test=1000 or roi_heads.score_thresh=0.01 (repeatable; a change the "
                        "checkpoint's weights do not fit is refused)")
    p.add_argument("--visualize", type=int, default=0, metavar="N", help="write pictures of N images")
    p.add_argument("--list-metrics", action="store_true", help="print the metrics.json keys and their meaning")
    errors.add_debug_option(p)
    return p


@errors.entry_point("python -m opmask_fast.evaluate")
def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if args.list_metrics:
        for k, v in {**METRIC_KEYS, **COMMAND_KEYS}.items():
            print(f"{k:<26} {v}")
        return None
    if args.checkpoint is None:
        raise errors.UsageError("the following arguments are required: --checkpoint (see --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The checkpoint, data, split, --prior-ablation and output folder are checked before the model is built.
    plan = preflight_inference.check_evaluate(args)
    return run_in_process_group(_evaluate, args, plan)


def _evaluate(args, info, plan) -> dict | None:
    dataset, out = plan.dataset, plan.output_dir
    if plan.model is not None:  # preflight built it to check evaluate's --set
        model = plan.model.to(info.device)
    else:
        model, _ = model_from_checkpoint(args.checkpoint, info.device, state=plan.state)
    start = time.time()
    with prior_ablation(model, args.prior_ablation):
        metrics = evaluate_model(model, dataset, strong_ids=dataset.strong_ids, device=info.device, output_dir=out,
                                 oracle=not args.no_oracle, max_images=args.max_images)
    if metrics is None:  # not rank 0
        return None
    metrics["data_dropped"] = dict(dataset.dropped)  # per reason, see opmask_fast.data.sanitize
    if args.set:
        metrics["config_overrides"] = list(args.set)
    write_metrics(metrics, os.path.join(out, "metrics.json"))
    print(f"{metrics['num_images']} images in {time.time() - start:.0f} s")
    print(format_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')}")
    if args.visualize:
        with prior_ablation(model, args.prior_ablation):
            files = visualize(model, dataset, num_images=args.visualize, output_dir=os.path.join(out, "vis"),
                              strong_ids=dataset.strong_ids, device=info.device)
        print(f"pictures: {len(files)} in {os.path.join(out, 'vis')}")
    return metrics


if __name__ == "__main__":
    main()
