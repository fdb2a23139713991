"""Evaluation of a model on a COCO-format dataset: box/mask AP overall, per class group (strong / weak), on ambiguous
vs other instances, of the prior alone used as a mask, and oracle-box mask IoU per class group.

Every AP is in percent (COCO AP at IoU 0.50:0.95 unless the key says AP50). The keys of the returned metrics are listed
in ``METRIC_KEYS``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..data.coco import CocoInstances, decode_segmentation
from .coco_eval import ambiguous_ann_ids, evaluate, per_category_ap, subset_ap
from .distributed import gather_objects, rank_and_world_size
from .paste import encode_masks, mask_iou, paste_maps

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


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def infer_images(model, dataset: CocoInstances, indices: Sequence[int], *, device: torch.device | str = "cpu",
                 oracle: bool = False) -> list[dict]:
    """Runs ``model`` on the images ``indices`` (batch 1); one entry per image: ``index``, ``image_id``, COCO
    ``results`` (bbox + segmentation), ``prior_results`` (each detection's prior pasted as a mask) and ``seconds``.

    With ``oracle`` each entry also holds ``oracle``: ``oracle_images``' entry of that image (None without GT masks),
    computed from the same backbone features when the model has ``extract``/``detect`` (one backbone pass per image
    instead of two; ``seconds`` still times the detection alone).
    """
    model = _unwrap(model)
    model.eval()
    shared = oracle and hasattr(model, "extract") and hasattr(model, "detect")
    out_list = []
    for index in indices:
        image, target = dataset[index]
        h, w = target["orig_size"]
        start = time.perf_counter()
        if shared:
            extracted = model.extract([image.to(device)])
            out = model.detect(extracted, output_sizes=[(h, w)])[0]
        else:
            out = model([image.to(device)], output_sizes=[(h, w)])[0]
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        boxes, scores, labels = out["boxes"].cpu().float(), out["scores"].cpu().float(), out["labels"].cpu()
        rles = encode_masks(out["masks"].cpu())
        cat_ids = [dataset.contiguous_to_id[int(c)] for c in labels]
        results, prior_results = [], []
        for i in range(boxes.shape[0]):
            x0, y0, x1, y1 = boxes[i].tolist()
            results.append({"image_id": target["image_id"], "category_id": cat_ids[i], "score": float(scores[i]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rles[i]})
        priors = out.get("priors")
        if priors is not None and priors.shape[0] > 0:
            prior_rles = encode_masks(paste_maps(priors.cpu(), boxes, (h, w), threshold=0.5))
            for i in range(boxes.shape[0]):
                prior_results.append({"image_id": target["image_id"], "category_id": cat_ids[i],
                                      "score": float(scores[i]), "segmentation": prior_rles[i]})
        entry = {"index": index, "image_id": target["image_id"], "results": results,
                 "prior_results": prior_results, "seconds": seconds}
        if oracle:
            keep = _oracle_keep(dataset, index)
            entry["oracle"] = _oracle_entry(model, dataset, index, keep, image, target, device,
                                            extracted if shared else None) if keep else None
        out_list.append(entry)
    return out_list


def merge_inference(shares: list[list[dict]]) -> dict:
    """Joins the per-image entries of ``infer_images`` from one or more processes in dataset order.

    Returns ``results``, ``prior_results``, ``image_ids`` and ``seconds_per_image`` (the mean without each process'
    first, warm-up image).
    """
    per_image = sorted((e for share in shares for e in share), key=lambda e: e["index"])
    timed = [e["seconds"] for share in shares for e in share[1:]] or [e["seconds"] for e in per_image]
    return {"results": [r for e in per_image for r in e["results"]],
            "prior_results": [r for e in per_image for r in e["prior_results"]],
            "image_ids": [e["image_id"] for e in per_image],
            "seconds_per_image": sum(timed) / max(len(timed), 1)}


def run_inference(model, dataset: CocoInstances, *, device: torch.device | str = "cpu",
                  max_images: int | None = None) -> dict:
    """Runs ``model`` on each image (batch 1) in this process; ``merge_inference``'s dict."""
    return merge_inference([infer_images(model, dataset, range(_count(dataset, max_images)), device=device)])


@torch.no_grad()
def oracle_images(model, dataset: CocoInstances, indices: Sequence[int], *,
                  device: torch.device | str = "cpu") -> list[dict]:
    """IoU of the mask (and of the prior alone) predicted for each GT box and label of the images ``indices``.

    One entry per image: ``index``, ``mask`` and ``prior`` lists of (COCO category id, IoU). Separates mask quality
    from detection quality. Instances without a segmentation are skipped.
    """
    model = _unwrap(model)
    model.eval()
    entries = []
    for index in indices:
        keep = _oracle_keep(dataset, index)
        if keep:
            image, target = dataset[index]
            entries.append(_oracle_entry(model, dataset, index, keep, image, target, device))
    return entries


def _oracle_keep(dataset: CocoInstances, index: int) -> list[int]:
    """The instances of image ``index`` with a segmentation (the ones the oracle pass scores)."""
    return [i for i, a in enumerate(dataset.records[index]["anns"]) if a["ann"].get("segmentation")]


def _oracle_entry(model, dataset: CocoInstances, index: int, keep: list[int], image, target, device,
                  extracted=None) -> dict:
    """``oracle_images``' entry of one image for its instances ``keep`` (``_oracle_keep``, not empty)."""
    record = dataset.records[index]
    h, w = target["orig_size"]
    boxes, labels = target["boxes"][keep], target["labels"][keep]
    kw = {} if extracted is None else {"extracted": extracted}
    out = model.predict_masks_for_boxes([image.to(device)], [boxes.to(device)], [labels.to(device)],
                                        output_sizes=[(h, w)], **kw)[0]
    gt = torch.from_numpy(
        np.stack([decode_segmentation(record["anns"][i]["ann"]["segmentation"], h, w) for i in keep])
    )
    cats = [record["anns"][i]["ann"]["category_id"] for i in keep]
    entry = {"index": index, "mask": list(zip(cats, mask_iou(out["masks"].cpu(), gt).tolist())), "prior": []}
    if out.get("priors") is not None:
        orig_boxes = torch.tensor([record["anns"][i]["box"] for i in keep], dtype=torch.float32)
        pm = paste_maps(out["priors"].cpu(), orig_boxes, (h, w), threshold=0.5)
        entry["prior"] = list(zip(cats, mask_iou(pm, gt).tolist()))
    return entry


def merge_oracle(shares: list[list[dict]]) -> dict[str, dict[int, list[float]]]:
    """``{"mask": {category id: [IoU, ...]}, "prior": {...}}`` in dataset order from ``oracle_images`` entries."""
    mask_ious, prior_ious = defaultdict(list), defaultdict(list)
    for e in sorted((e for share in shares for e in share), key=lambda e: e["index"]):
        for c, v in e["mask"]:
            mask_ious[c].append(v)
        for c, v in e["prior"]:
            prior_ious[c].append(v)
    return {"mask": dict(mask_ious), "prior": dict(prior_ious)}


def oracle_ious(model, dataset: CocoInstances, *, device: torch.device | str = "cpu",
                max_images: int | None = None) -> dict[str, dict[int, list[float]]]:
    """``merge_oracle``'s dict for the (first ``max_images``) images, in this process."""
    return merge_oracle([oracle_images(model, dataset, range(_count(dataset, max_images)), device=device)])


def _count(dataset, max_images: int | None) -> int:
    return len(dataset) if max_images is None else min(max_images, len(dataset))


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
        "prior_AP": subset_ap(prior)["AP"] if inference["prior_results"] else math.nan,
        "prior_AP_strong": subset_ap(prior, strong)["AP"] if inference["prior_results"] else math.nan,
        "prior_AP_weak": subset_ap(prior, weak)["AP"] if inference["prior_results"] else math.nan,
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
                   oracle: bool = True, max_images: int | None = None) -> dict | None:
    """Inference + metrics; writes ``predictions.json``, ``prior_predictions.json`` and ``metrics.json`` when
    ``output_dir`` is given.

    In a process group every process must call it: each infers the images ``rank, rank + world_size, ...``, rank 0
    gathers them in dataset order and runs COCOeval, so the metrics are the same for any number of processes.
    Returns the metrics on rank 0 and None on the other ranks.
    """
    weak_ids = set(dataset.category_ids) - set(strong_ids)
    rank, world = rank_and_world_size()
    mine = range(rank, _count(dataset, max_images), world)
    shares = gather_objects(infer_images(model, dataset, mine, device=device, oracle=oracle))
    if shares is None:
        return None
    inf = merge_inference(shares)
    ora = merge_oracle([[e["oracle"] for e in share if e["oracle"]] for share in shares]) if oracle else None
    metrics = compute_metrics(dataset, inf, ora, strong_ids=strong_ids, weak_ids=weak_ids)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "predictions.json"), "w") as f:
            json.dump(inf["results"], f)
        with open(os.path.join(output_dir, "prior_predictions.json"), "w") as f:
            json.dump(inf["prior_results"], f)
        write_metrics(metrics, os.path.join(output_dir, "metrics.json"))
    return metrics


def write_metrics(metrics: dict, path: str) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(metrics), f, indent=2)
    os.replace(tmp, path)


def json_safe(v):
    """``v`` with every non-finite float (nested in dicts and lists too) replaced by None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


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
