"""Metrics of a model on a COCO-format dataset (the inference itself is ``inference.py``): box/mask AP overall, per
class group (strong / weak), on ambiguous vs other instances, of the prior alone used as a mask, and oracle-box mask
IoU per class group; how they are written (``metrics.json``, the training's metrics log) and printed.

Every AP is in percent (COCO AP at IoU 0.50:0.95 unless the key says AP50). The keys of the returned metrics are listed
in ``METRIC_KEYS``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from ..data.coco import CocoInstances
from ..training.distributed import gather_objects, rank_and_world_size
from ..training.progress import MetricsLog, json_safe
from .coco_eval import ambiguous_ann_ids, evaluate, per_category_ap, subset_ap
from .inference import infer_images, item_count, merge_inference, merge_oracle

logger = logging.getLogger(__name__)

METRIC_KEYS = {
    "bbox_AP": "box AP, all classes", "bbox_AP50": "box AP at IoU 0.5, all classes",
    "mask_AP": "mask AP, all classes", "mask_AP50": "mask AP at IoU 0.5, all classes",
    "mask_AP_strong": "mask AP over the strong (mask-supervised) classes", "mask_AP50_strong": "same at IoU 0.5",
    "mask_AP_weak": "mask AP over the weak (box-only) classes: the partially supervised result",
    "mask_AP50_weak": "same at IoU 0.5",
    "box_AP_strong": "box AP over the strong classes", "box_AP_weak": "box AP over the weak classes",
    "mask_AP_ambiguous": "mask AP, all classes, on GT whose box has IoU >= 0.5 with another GT box (others ignored)",
    "mask_AP_unambiguous": "mask AP, all classes, on the other ground truth (ambiguous ones ignored)",
    "mask_AP_weak_ambiguous": "mask_AP_ambiguous over the weak classes",
    "mask_AP_weak_unambiguous": "mask_AP_unambiguous over the weak classes",
    "num_gt_ambiguous": "number of ambiguous GT instances", "num_gt_unambiguous": "number of the other GT instances",
    "prior_AP": "mask AP of each detection's prior (normalised CAM) pasted into its box at 0.5, all classes",
    "prior_AP_strong": "prior_AP over the strong classes", "prior_AP_weak": "prior_AP over the weak classes",
    "oracle_mIoU_strong": "mask IoU given GT boxes and labels, mean over strong classes of the per-class mean, percent",
    "oracle_mIoU_weak": "same over the weak classes",
    "oracle_prior_mIoU_strong": "IoU of the prior alone pasted into the GT box, strong classes, percent",
    "oracle_prior_mIoU_weak": "same, weak classes",
    "mask_AP_per_class": "mask AP of each class, by name",
    "oracle_IoU_per_class": "oracle mask IoU of each class, by name",
    "seconds_per_image": "model time per image (forward incl. mask pasting, batch 1, first image excluded)",
    "num_images": "evaluated images", "num_detections": "detections kept",
    "strong_categories": "names of the strong classes", "weak_categories": "names of the weak classes",
    "data_dropped": "unusable annotations per reason: bbox_* dropped, mask_* kept box-only (opmask_fast.data.sanitize)",
}
# The short names of the headline metrics in the tables of runs (the comparison, the reports), in their order.
METRIC_LABELS = {
    "mask_AP_weak": "mask AP weak", "mask_AP_strong": "mask AP strong", "mask_AP50_weak": "mask AP50 weak",
    "box_AP_weak": "box AP weak", "box_AP_strong": "box AP strong", "mask_AP": "mask AP (all)",
    "bbox_AP": "box AP (all)", "mask_AP_ambiguous": "mask AP ambiguous", "mask_AP_unambiguous": "mask AP non-ambiguous",
    "prior_AP_weak": "prior AP weak", "prior_AP_strong": "prior AP strong", "oracle_mIoU_weak": "oracle mIoU weak",
    "oracle_mIoU_strong": "oracle mIoU strong", "seconds_per_image": "s/img", "num_images": "images",
}
# What the commands add to metrics.json beside METRIC_KEYS.
COMMAND_KEYS = {
    "val_data_dropped": "train: the same for the validation data (data_dropped is the training data's there)",
    "train_seconds": "train: wall seconds of the training (a resumed run's include the earlier segments')",
    "eval_seconds": "train: wall seconds of the evaluation",
    "config_overrides": "evaluate: the --set changes the model was evaluated with",
}
# What an evaluation writes into its output folder (a new training in the folder of an earlier run removes them).
RESULT_FILES = ("predictions.json", "prior_predictions.json", "metrics.json")


def _group_miou(ious: dict[int, list[float]], cat_ids) -> float:
    per_class = [sum(ious[c]) / len(ious[c]) for c in cat_ids if ious.get(c)]
    return 100.0 * sum(per_class) / len(per_class) if per_class else math.nan


def compute_metrics(dataset: CocoInstances, inference: dict, oracle: dict | None, *, strong_ids, weak_ids) -> dict:
    """Assembles the metrics of ``METRIC_KEYS`` from inference results and oracle IoUs."""
    coco, image_ids = dataset.coco, inference["image_ids"]
    strong, weak = sorted(strong_ids), sorted(weak_ids)
    names = dict(zip(dataset.category_ids, dataset.category_names))
    box = evaluate(coco, inference["results"], "bbox", image_ids=image_ids)
    segm = evaluate(coco, inference["results"], "segm", image_ids=image_ids)
    amb, rest = ambiguous_ann_ids(coco, image_ids)
    segm_amb = evaluate(coco, inference["results"], "segm", image_ids=image_ids, ignore_ann_ids=rest)
    segm_rest = evaluate(coco, inference["results"], "segm", image_ids=image_ids, ignore_ann_ids=amb)
    prior = evaluate(coco, inference["prior_results"], "segm", image_ids=image_ids)
    # A model that returns priors but detected nothing scores 0 like its masks; only a model without priors has none.
    has_priors = inference.get("has_priors", bool(inference["prior_results"]))
    m = {
        "bbox_AP": subset_ap(box)["AP"], "bbox_AP50": subset_ap(box)["AP50"],
        "mask_AP": subset_ap(segm)["AP"], "mask_AP50": subset_ap(segm)["AP50"],
        "mask_AP_strong": subset_ap(segm, strong)["AP"], "mask_AP50_strong": subset_ap(segm, strong)["AP50"],
        "mask_AP_weak": subset_ap(segm, weak)["AP"], "mask_AP50_weak": subset_ap(segm, weak)["AP50"],
        "box_AP_strong": subset_ap(box, strong)["AP"], "box_AP_weak": subset_ap(box, weak)["AP"],
        "mask_AP_ambiguous": subset_ap(segm_amb)["AP"] if amb else math.nan,
        "mask_AP_unambiguous": subset_ap(segm_rest)["AP"] if rest else math.nan,
        "mask_AP_weak_ambiguous": subset_ap(segm_amb, weak)["AP"] if amb else math.nan,
        "mask_AP_weak_unambiguous": subset_ap(segm_rest, weak)["AP"] if rest else math.nan,
        "num_gt_ambiguous": len(amb), "num_gt_unambiguous": len(rest),
        "prior_AP": subset_ap(prior)["AP"] if has_priors else math.nan,
        "prior_AP_strong": subset_ap(prior, strong)["AP"] if has_priors else math.nan,
        "prior_AP_weak": subset_ap(prior, weak)["AP"] if has_priors else math.nan,
        "mask_AP_per_class": {names[c]: v for c, v in per_category_ap(segm, dataset.category_ids).items()},
        "seconds_per_image": inference["seconds_per_image"], "num_images": len(image_ids),
        "num_detections": len(inference["results"]),
        "strong_categories": [names[c] for c in strong], "weak_categories": [names[c] for c in weak],
    }
    if oracle is not None:
        m["oracle_mIoU_strong"] = _group_miou(oracle["mask"], strong)
        m["oracle_mIoU_weak"] = _group_miou(oracle["mask"], weak)
        m["oracle_prior_mIoU_strong"] = _group_miou(oracle["prior"], strong)
        m["oracle_prior_mIoU_weak"] = _group_miou(oracle["prior"], weak)
        m["oracle_IoU_per_class"] = {names[c]: 100.0 * sum(v) / len(v) for c, v in sorted(oracle["mask"].items()) if v}
    return m


def evaluate_model(model, dataset: CocoInstances, *, strong_ids, device="cpu", output_dir: str | None = None,
                   oracle: bool = True, max_images: int | None = None, static: bool = True) -> dict | None:
    """Inference + metrics; writes ``predictions.json``, ``prior_predictions.json`` and ``metrics.json`` when
    ``output_dir`` is given.

    In a process group every process must call it: each infers the images ``rank, rank + world_size, ...``, rank 0
    gathers them in dataset order and runs COCOeval, so the metrics are the same for any number of processes.
    Returns the metrics on rank 0 and None on the other ranks.
    """
    weak_ids = set(dataset.category_ids) - set(strong_ids)
    rank, world = rank_and_world_size()
    mine = range(rank, item_count(dataset, max_images), world)
    shares = gather_objects(infer_images(model, dataset, mine, device=device, oracle=oracle, static=static))
    if shares is None:
        return None
    inf = merge_inference(shares)
    ora = merge_oracle([[e["oracle"] for e in share if e["oracle"]] for share in shares]) if oracle else None
    metrics = compute_metrics(dataset, inf, ora, strong_ids=strong_ids, weak_ids=weak_ids)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        predictions, priors, metrics_file = (os.path.join(output_dir, name) for name in RESULT_FILES)
        with open(predictions, "w") as f:
            json.dump(inf["results"], f)
        with open(priors, "w") as f:
            json.dump(inf["prior_results"], f)
        write_metrics(metrics, metrics_file)
    return metrics


def write_metrics(metrics: dict, path: str) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(metrics), f, indent=2)
    os.replace(tmp, path)


def format_table(metrics: dict) -> str:
    """The headline numbers as an aligned two-column table."""
    rows = [
        ("mask AP weak / strong", "mask_AP_weak", "mask_AP_strong"),
        ("box AP weak / strong", "box_AP_weak", "box_AP_strong"),
        ("oracle mIoU weak / strong", "oracle_mIoU_weak", "oracle_mIoU_strong"),
        ("mask AP ambiguous / other", "mask_AP_ambiguous", "mask_AP_unambiguous"),
        ("prior AP weak / strong", "prior_AP_weak", "prior_AP_strong"),
        ("mask AP / box AP (all)", "mask_AP", "bbox_AP"),
    ]
    fmt = lambda v: "  -  " if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:5.1f}"
    lines = [f"{label:<28} {fmt(metrics.get(a))} / {fmt(metrics.get(b))}" for label, a, b in rows]
    lines.append(f"{'s/img':<28} {metrics.get('seconds_per_image', math.nan):.4f}")
    return "\n".join(lines)


def log_evaluation(log: MetricsLog | str, iteration: int, metrics: dict) -> None:
    """Logs the headline metrics and appends ``{"iteration", "eval": {scalar metrics}, "time"}`` to the metrics log
    (a ``MetricsLog`` or the path of ``metrics.jsonl``), replacing an earlier evaluation of the same iteration."""
    logger.info("evaluation at iteration %d:\n%s", iteration, format_table(metrics))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    log = MetricsLog(log) if isinstance(log, str) else log
    log.drop_evaluation(iteration)
    log.write({"iteration": iteration, "eval": json_safe(scalars), "time": time.time()})
