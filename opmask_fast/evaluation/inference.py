"""Inference over a COCO-format dataset, batch 1, in this process: detections as COCO results (boxes, masks as RLE,
each detection's prior pasted as a mask) and the oracle pass (masks for the ground-truth boxes and labels)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..data.coco import CocoInstances, decode_segmentation
from ..modeling.meta_arch import StaticInference
from .mask_encoding import encode_masks, mask_iou, paste_maps


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def infer_images(model, dataset: CocoInstances, indices: Sequence[int], *, device: torch.device | str = "cpu",
                 oracle: bool = False, static: bool = True) -> list[dict]:
    """Runs ``model`` on the images ``indices`` (batch 1); one entry per image: ``index``, ``image_id``, COCO
    ``results`` (bbox + segmentation), ``prior_results`` (each detection's prior pasted as a mask) and ``seconds``.

    ``static`` runs the static-shape path (`StaticInference`: the same detections without a host sync until the
    count is read) on models that have one, else ``OPMaskModel.detect``. With ``oracle`` each entry also holds
    ``oracle``: ``oracle_images``' entry of that image (None without GT masks), computed from the same backbone
    features when the model has ``extract`` (one backbone pass per image instead of two; ``seconds`` still times
    the detection alone).
    """
    model = _unwrap(model)
    model.eval()
    shared = hasattr(model, "extract") and hasattr(model, "detect")
    fixed = StaticInference(model) if static and shared else None
    out_list = []
    for index in indices:
        image, target = dataset[index]
        h, w = target["orig_size"]
        start = time.perf_counter()
        if shared:
            extracted = model.extract([image.to(device)])
            if fixed is not None:
                (ih, iw), = extracted[1]
                padded = fixed.detect(extracted[0], 1, ih, iw)
                n = int(padded["count"][0])  # the one read of the device's results
                det = {k: v[0, :n] for k, v in padded.items() if k != "count"}
                out = model.postprocess([det], extracted[1], [(h, w)])[0]
            else:
                out = model.detect(extracted, output_sizes=[(h, w)])[0]
        else:
            out = model([image.to(device)], output_sizes=[(h, w)])[0]
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)  # the model's GPU, not the current one
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
                 "prior_results": prior_results, "has_priors": priors is not None, "seconds": seconds}
        if oracle:
            keep = _oracle_keep(dataset, index)
            entry["oracle"] = _oracle_entry(model, dataset, index, keep, image, target, device,
                                            extracted if shared else None) if keep else None
        out_list.append(entry)
    return out_list


def merge_inference(shares: list[list[dict]]) -> dict:
    """Joins the per-image entries of ``infer_images`` from one or more processes in dataset order.

    Returns ``results``, ``prior_results``, ``has_priors`` (the model returns priors: with no detection its prior AP
    is 0, not empty), ``image_ids`` and ``seconds_per_image`` (the mean without each process' first, warm-up image).
    """
    per_image = sorted((e for share in shares for e in share), key=lambda e: e["index"])
    timed = [e["seconds"] for share in shares for e in share[1:]] or [e["seconds"] for e in per_image]
    return {"results": [r for e in per_image for r in e["results"]],
            "prior_results": [r for e in per_image for r in e["prior_results"]],
            "has_priors": any(e.get("has_priors", bool(e["prior_results"])) for e in per_image),
            "image_ids": [e["image_id"] for e in per_image],
            "seconds_per_image": sum(timed) / max(len(timed), 1)}


def run_inference(model, dataset: CocoInstances, *, device: torch.device | str = "cpu",
                  max_images: int | None = None) -> dict:
    """Runs ``model`` on each image (batch 1) in this process; ``merge_inference``'s dict."""
    return merge_inference([infer_images(model, dataset, range(item_count(dataset, max_images)), device=device)])


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
    return merge_oracle([oracle_images(model, dataset, range(item_count(dataset, max_images)), device=device)])


def item_count(dataset, max_images: int | None) -> int:
    return len(dataset) if max_images is None else min(max_images, len(dataset))
