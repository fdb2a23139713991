"""COCO-format instance segmentation dataset with partial mask supervision."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import random
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor

from .sanitize import (DROP_REASONS, INT64_MAX, MIN_BOX_SIDE, box_polygon, check_box, check_segmentation,
                       check_structure, is_finite_number, summarize)
from .splits import resolve_split
from .transforms import ResizeFlip, read_rgb, shown_size

logger = logging.getLogger(__name__)

__all__ = ["CocoInstances", "decode_segmentation", "load_coco", "MIN_BOX_SIDE"]


def load_coco(ann_file: str) -> COCO:
    """Loads a COCO instances JSON with clear errors for a missing, corrupt or inconsistent file (see
    ``sanitize.check_structure``)."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}"
                                + (" (it is a folder)" if os.path.isdir(ann_file) else ""))
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {e}") from None
    check_structure(data, ann_file)
    anns = data["annotations"]
    if any(a["id"] == 0 for a in anns):
        # COCOeval marks an unmatched ground truth with id 0, so a matched annotation of id 0 would count as missed
        # (AP too low): it gets a free id (ids are unique int64 integers, see check_structure); messages name it by
        # the id of the file (`file_id`).
        ids = {a["id"] for a in anns}
        free = max(ids) + 1 if max(ids) < INT64_MAX else next(i for i in itertools.count(1) if i not in ids)
        data = {**data, "annotations": [{**a, "id": free, "file_id": 0} if a["id"] == 0 else a for a in anns]}
    return _index(data)


def _index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


class CocoInstances(torch.utils.data.Dataset):
    """Images with boxes, labels and (for strong classes only) masks from a COCO instances file.

    Args:
        ann_file: COCO instances JSON.
        image_dir: folder of the images (``file_name`` is relative to it).
        split: mask-supervision split (see ``resolve_split``); ``None`` keeps every class strong.
        split_seed: seed of seeded splits (``voc40``).
        transform: resize/flip applied to image and target; ``None`` keeps the original size.
        masks: ``"strong"`` decodes masks of strong classes only (training), ``"none"`` decodes none (inference).
        filter_empty: drop images without usable instances (training; evaluation keeps them).
        coco: ``load_coco(ann_file)`` when already loaded (e.g. to choose the split from its categories).

    Each item is ``(image, target)``: ``image: Tensor[3, H, W]`` float32 RGB 0..255 after the transform, and ``target``
    with ``boxes: Tensor[N, 4]`` xyxy, ``labels: Tensor[N]`` int64 contiguous ids, ``masks: Tensor[N, H, W]`` uint8
    (zero rows where ``has_mask`` is False), ``has_mask: Tensor[N]`` bool, ``image_id`` (COCO id), ``orig_size`` (h, w)
    and ``scale`` (resized / original, per axis ``(sy, sx)``). Crowd regions are skipped (evaluation reads them from
    ``self.coco``).
    Unusable annotations follow the one rule of ``opmask_fast.data.sanitize``: a bad box drops the annotation, a bad
    mask leaves it box-only; ``dropped`` counts them per reason, ``dropped_ids`` names them, and a warning is logged.
    Indexing with ``(index, seed)`` draws the augmentation from ``seed``, which keeps resumed runs exact.
    """

    def __init__(
        self,
        *,
        ann_file: str,
        image_dir: str,
        split: str | Sequence[str | int] | None = None,
        split_seed: int = 0,
        transform: ResizeFlip | None = None,
        masks: str = "strong",
        filter_empty: bool = False,
        coco: COCO | None = None,
    ) -> None:
        if masks not in ("strong", "none"):
            raise ValueError(f"masks must be 'strong' or 'none', got {masks!r}")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        self.ann_file, self.image_dir = ann_file, image_dir
        self.coco = load_coco(ann_file) if coco is None else coco
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.categories = cats
        self.category_ids = [int(c["id"]) for c in cats]
        self.category_names = [str(c["name"]) for c in cats]
        self.id_to_contiguous = {cid: i for i, cid in enumerate(self.category_ids)}
        self.contiguous_to_id = dict(enumerate(self.category_ids))
        self.strong_ids = set(self.category_ids) if split is None else resolve_split(split, cats, seed=split_seed)
        self.weak_ids = set(self.category_ids) - self.strong_ids
        self.transform = transform
        self.masks = masks
        self.dropped: dict[str, int] = {}  # reason (see sanitize.REASONS) -> number of annotations
        self.dropped_ids: dict[str, list[int]] = {}  # reason -> annotation ids
        self.records = self._build_records(filter_empty)
        self._check_images()
        self.dropped = dict(sorted(self.dropped.items()))
        if self.dropped:
            logger.warning("%s: %s", ann_file, summarize(self.dropped, self.dropped_ids))

    @property
    def num_degenerate(self) -> int:
        """Annotations dropped for their box (every ``bbox_*`` reason)."""
        return sum(self.dropped.get(r, 0) for r in DROP_REASONS)

    # ---- index ---------------------------------------------------------------------------------------------------
    def _count(self, reason: str, ann: dict) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.dropped_ids.setdefault(reason, []).append(ann.get("file_id", ann["id"]))

    def _build_records(self, filter_empty: bool) -> list[dict]:
        """Applies the annotation rule of ``sanitize`` and indexes the usable instances per image.

        Masks are checked where they are used: the strong classes' in training (``masks="strong"``; weak-class
        segmentations are never looked at), every class's for evaluation (``masks="none"``: the ground truth of mask
        AP). ``self.coco`` is rebuilt without dropped annotations; box-only ones are flagged ``box_only`` and get their
        box as the region mask AP ignores (see ``evaluation.coco_eval``).
        """
        training = self.masks == "strong"
        mask_ids = self.strong_ids if training else set(self.category_ids)
        records, gt, changed = [], [], False
        for img_id in sorted(self.coco.imgs):
            info = self.coco.imgs[img_id]
            h, w = int(info["height"]), int(info["width"])
            anns = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                crowd = bool(ann.get("iscrowd", 0))
                if crowd and training:  # crowd regions only matter to evaluation
                    gt.append(ann)
                    continue
                box, reason = check_box(ann.get("bbox"), h, w)
                if reason:
                    self._count(reason, ann)
                    changed = True
                    continue
                has_mask, area = False, None
                if ann["category_id"] in mask_ids:
                    area, reason = check_segmentation(ann.get("segmentation"), h, w)
                    has_mask = reason is None
                    if reason:
                        self._count(reason, ann)
                fixed = ann
                segm = ann.get("segmentation")
                if has_mask and isinstance(segm, list) and any(len(p) < 6 for p in segm):
                    # The mask rule drops polygon parts of fewer than three points; COCOeval must not see them either
                    # (pycocotools reads the format off the first part: four numbers are a box, fewer an error).
                    fixed = {**ann, "segmentation": [p for p in segm if len(p) >= 6]}
                    changed = True
                if reason or "iscrowd" not in ann or not _is_area(ann.get("area")):
                    # COCOeval needs iscrowd and area; a box-only GT gets its box as the region mask AP ignores.
                    fixed = {**fixed, "iscrowd": int(crowd)}
                    if not _is_area(ann.get("area")):
                        fixed["area"] = area if has_mask else (box[2] - box[0]) * (box[3] - box[1])
                    if reason:
                        fixed.update(segmentation=box_polygon(box), box_only=True, box_only_iscrowd=int(crowd))
                    changed = True
                gt.append(fixed)
                if not crowd:
                    record_ann = fixed if not reason else {k: v for k, v in fixed.items() if k != "segmentation"}
                    anns.append({"box": box, "ann": record_ann, "has_mask": has_mask})
            if filter_empty and not anns:
                continue
            records.append({"image_id": img_id, "file_name": info["file_name"], "height": h, "width": w, "anns": anns})
        if changed:
            self.coco = _index({**self.coco.dataset, "annotations": gt})
        return records

    def _check_images(self) -> None:
        folders = [r["file_name"] for r in self.records if os.path.isdir(os.path.join(self.image_dir, r["file_name"]))]
        if folders:
            raise ValueError(f"{len(folders)} file_name(s) of {self.ann_file} name folders in {self.image_dir}, not "
                             f"images, e.g. {folders[:3]}")
        missing = [r["file_name"] for r in self.records
                   if not os.path.isfile(os.path.join(self.image_dir, r["file_name"]))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.records)} images of {self.ann_file} are missing from "
                                    f"{self.image_dir}, e.g. {missing[:3]}")

    def verify_images(self, *, decode_limit: int = 2000, used: int | None = None) -> None:
        """Opens every image and checks its size against the annotation file.

        Args:
            decode_limit: up to this many, the images a run reads are decoded in full (a truncated file is found too);
                beyond, headers only (a decoding error later is a `transforms.ImageReadError` naming the file).
            used: how many of the first images a run reads (an evaluation's limit); None: all of them.

        Raises:
            ValueError: an unreadable image or one of another size, named with its image id.
        """
        read = len(self.records) if used is None else min(used, len(self.records))
        decoded = read if read <= decode_limit else 0
        for i, r in enumerate(self.records):
            path = os.path.join(self.image_dir, r["file_name"])
            try:
                with Image.open(path) as im:
                    size, shown = im.size, shown_size(im)
                    if i < decoded:
                        im.load()
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged file makes Pillow's decoders raise nearly anything
                raise ValueError(f"cannot read image {path} (image {r['image_id']} of {self.ann_file}): {e}") from None
            # Either size is an annotation frame: the shown one (the usual) or the stored one (`upright`).
            if (r["width"], r["height"]) not in (size, shown):
                turned = f" (shown {shown[0]}x{shown[1]} by its EXIF orientation)" if shown != size else ""
                raise ValueError(f"image {path} is {size[0]}x{size[1]}{turned}, {self.ann_file} says {r['width']}x"
                                 f"{r['height']} (image {r['image_id']})")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[int]:
        return [r["image_id"] for r in self.records]

    # ---- items ---------------------------------------------------------------------------------------------------
    def load_image(self, index: int) -> Tensor:
        """``Tensor[3, H, W]`` float32 RGB 0..255 at the original size."""
        r = self.records[index]
        path = os.path.join(self.image_dir, r["file_name"])
        arr = read_rgb(path, (r["width"], r["height"]))
        if arr.shape[:2] != (r["height"], r["width"]):
            raise ValueError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, "
                             f"the annotation says {r['width']}x{r['height']}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float()

    def load_target(self, index: int) -> dict:
        r = self.records[index]
        h, w = r["height"], r["width"]
        n = len(r["anns"])
        boxes = torch.tensor([a["box"] for a in r["anns"]], dtype=torch.float32).reshape(n, 4)
        labels = torch.tensor([self.id_to_contiguous[a["ann"]["category_id"]] for a in r["anns"]], dtype=torch.int64)
        masks = torch.zeros((n, h, w), dtype=torch.uint8)
        has_mask = torch.zeros(n, dtype=torch.bool)
        if self.masks == "strong":
            for i, a in enumerate(r["anns"]):
                ann = a["ann"]
                # Weak-class segmentations are never decoded: partial supervision must not see them.
                if ann["category_id"] in self.strong_ids and a["has_mask"]:
                    masks[i] = torch.from_numpy(decode_segmentation(ann["segmentation"], h, w))
                    has_mask[i] = True
        return {
            "boxes": boxes,
            "labels": labels,
            "masks": masks,
            "has_mask": has_mask,
            "image_id": r["image_id"],
            "orig_size": (h, w),
        }

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, target = self.load_image(index), self.load_target(index)
        h, w = image.shape[-2:]
        if self.transform is not None:
            image, target = self.transform(image, target, random.Random(seed) if seed is not None else None)
        target["scale"] = (image.shape[-2] / h, image.shape[-1] / w)
        return image, target


def _is_area(v) -> bool:
    return isinstance(v, (int, float)) and is_finite_number(v) and v >= 0


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """Decodes a COCO segmentation (polygons, possibly in several parts; uncompressed or compressed RLE) to
    ``uint8 [H, W]``."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]  # a polygon needs three points; shorter ones are annotation noise
        if not polys:
            return np.zeros((height, width), dtype=np.uint8)
        rles = mask_utils.frPyObjects(polys, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = segm
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
    return mask_utils.decode(rle).astype(np.uint8)
