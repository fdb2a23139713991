"""pycocotools COCOeval helpers: AP over category subsets and over a subset of ground-truth instances."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterable

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


class SubsetCOCOeval(COCOeval):
    """COCOeval that also ignores the ground-truth annotations in ``ignore_ann_ids``.

    pycocotools overwrites any ``ignore`` flag of a ground truth with its ``iscrowd`` in ``_prepare``, so the flag is
    set again after it. An ignored instance is neither a miss nor a false positive: a detection matching it is left out,
    which is how AP on "ambiguous" instances is measured (the others are ignored) and vice versa.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, iou_type: str, *, ignore_ann_ids: Iterable[int] = ()) -> None:
        super().__init__(coco_gt, coco_dt, iou_type)
        self.ignore_ann_ids = set(ignore_ann_ids)

    def _prepare(self) -> None:
        super()._prepare()
        for key, gts in self._gts.items():
            for i, g in enumerate(gts):
                # A box-only ground truth (its mask was unusable, see opmask_fast.data.sanitize) counts for box AP;
                # for mask AP its box is a crowd-like region: a detection inside it is neither a hit nor a false
                # positive. Changed on a copy: the dataset's own annotation stays what it is (ambiguous_ann_ids
                # reads its iscrowd after an evaluation).
                if "box_only_iscrowd" in g and self.params.iouType == "segm":
                    g = gts[i] = {**g, "iscrowd": 1}
                g["ignore"] = bool(g.get("iscrowd", 0)) or g["id"] in self.ignore_ann_ids


def evaluate(coco_gt: COCO, results: list[dict], iou_type: str, *, image_ids: list[int],
             ignore_ann_ids: Iterable[int] = ()) -> SubsetCOCOeval:
    """Runs evaluate + accumulate quietly. With no detection at all every AP is 0, and NaN for a subset without
    ground truth, as with any other result list.

    Args:
        results: COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` xywh and/or ``segmentation`` RLE).
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: the evaluated images (images without detections count their ground truth as missed).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    # loadRes and COCOeval add and replace keys of each result (area, id, iscrowd, segmentation) but never change the
    # values inside: a copy of each dict keeps the caller's list intact without a deep copy of every RLE.
    results = [dict(r) for r in results]
    if iou_type == "segm":
        # With a "bbox" key loadRes would take box areas for the area ranges; the mask's own area is the right one.
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list: an empty result set of the same images and categories
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])), "annotations": [],
                               "categories": list(coco_gt.dataset.get("categories", []))}
            coco_dt.createIndex()
        ev = SubsetCOCOeval(coco_gt, coco_dt, iou_type, ignore_ann_ids=ignore_ann_ids)
        ev.params.imgIds = list(image_ids)
        # Area "all" only: it is the one subset_ap reads, and the small/medium/large passes were three quarters of
        # evaluateImg's time. Each area range is matched on its own, so "all" comes out exactly as with all four.
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        assert ev.params.areaRngLbl == ["all"], ev.params.areaRngLbl
        ev.evaluate()
        ev.accumulate()
    return ev


def subset_ap(ev: SubsetCOCOeval | None, category_ids: Iterable[int] | None = None) -> dict[str, float]:
    """AP (IoU 0.50:0.95) and AP50 in percent over ``category_ids`` (all when ``None``), area "all", 100 detections.

    Same averaging as COCOeval.summarize: the mean of the precision entries that exist (categories without ground
    truth have none). NaN when the subset has no ground truth; ``ev`` None (nothing evaluated) gives 0.
    """
    if ev is None:
        return {"AP": 0.0, "AP50": 0.0}
    cat_ids = list(ev.params.catIds)
    wanted = cat_ids if category_ids is None else [c for c in category_ids if c in cat_ids]
    if not wanted:
        return {"AP": math.nan, "AP50": math.nan}
    k = [cat_ids.index(c) for c in wanted]
    prec = ev.eval["precision"][:, :, k, 0, -1]  # [T, R, K] at area "all", maxDets 100

    def mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean() * 100) if valid.size else math.nan

    return {"AP": mean(prec), "AP50": mean(prec[0])}


def per_category_ap(ev: SubsetCOCOeval | None, category_ids: Iterable[int]) -> dict[int, float]:
    """Mask or box AP in percent of each category id."""
    return {c: subset_ap(ev, [c])["AP"] for c in category_ids}


def box_iou_xywh(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, N]`` of ``[N, 4]`` xywh boxes."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = iw * ih
    area = boxes[:, 2] * boxes[:, 3]
    union = area[:, None] + area[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def ambiguous_ann_ids(coco_gt: COCO, image_ids: Iterable[int], *, iou_threshold: float = 0.5) -> tuple[set, set]:
    """Splits the non-crowd ground truth of ``image_ids`` into (ambiguous, unambiguous) annotation ids.

    An instance is ambiguous when its box has IoU >= ``iou_threshold`` with another ground-truth box of the same image
    (any class), as in the OPMask paper's Table 1.
    """
    ambiguous, rest = set(), set()
    for img_id in image_ids:
        anns = [a for a in coco_gt.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        iou = box_iou_xywh(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
        np.fill_diagonal(iou, 0.0)
        for a, m in zip(anns, iou.max(axis=1)):
            (ambiguous if m >= iou_threshold else rest).add(a["id"])
    return ambiguous, rest
