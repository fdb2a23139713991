"""COCO-format instance segmentation dataset with partial mask supervision."""

from __future__ import annotations

import contextlib
import io
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

from .splits import resolve_split
from .transforms import ResizeFlip

logger = logging.getLogger(__name__)

# Boxes thinner than this (in original pixels) carry no learnable extent; they are dropped and counted.
MIN_BOX_SIDE = 1.0


def load_coco(ann_file: str) -> COCO:
    """Loads a COCO instances JSON with clear errors for a missing or corrupt file."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ValueError(f"annotation file {ann_file} is not a COCO instances file "
                         "(needs images, annotations, categories)")
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

    Each item is ``(image, target)``: ``image: Tensor[3, H, W]`` float32 RGB 0..255 after the transform, and ``target``
    with ``boxes: Tensor[N, 4]`` xyxy, ``labels: Tensor[N]`` int64 contiguous ids, ``masks: Tensor[N, H, W]`` uint8
    (zero rows where ``has_mask`` is False), ``has_mask: Tensor[N]`` bool, ``image_id`` (COCO id), ``orig_size`` (h, w)
    and ``scale`` (resized / original, per axis ``(sy, sx)``). Crowd regions are skipped (evaluation reads them from
    the JSON).
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
    ) -> None:
        if masks not in ("strong", "none"):
            raise ValueError(f"masks must be 'strong' or 'none', got {masks!r}")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        self.ann_file, self.image_dir = ann_file, image_dir
        self.coco = load_coco(ann_file)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"annotation file {ann_file} lists no categories")
        self.categories = cats
        self.category_ids = [int(c["id"]) for c in cats]
        self.category_names = [str(c["name"]) for c in cats]
        self.id_to_contiguous = {cid: i for i, cid in enumerate(self.category_ids)}
        self.contiguous_to_id = dict(enumerate(self.category_ids))
        self.strong_ids = set(self.category_ids) if split is None else resolve_split(split, cats, seed=split_seed)
        self.weak_ids = set(self.category_ids) - self.strong_ids
        self.transform = transform
        self.masks = masks
        self.num_degenerate = 0
        self.records = self._build_records(filter_empty)
        self._check_images()
        if self.num_degenerate:
            logger.warning("%s: dropped %d degenerate boxes (side < %.1f px)", ann_file, self.num_degenerate,
                           MIN_BOX_SIDE)

    # ---- index ---------------------------------------------------------------------------------------------------
    def _build_records(self, filter_empty: bool) -> list[dict]:
        records = []
        for img_id in sorted(self.coco.imgs):
            info = self.coco.imgs[img_id]
            h, w = int(info["height"]), int(info["width"])
            anns = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0):
                    continue
                if ann["category_id"] not in self.id_to_contiguous:
                    raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} has unknown category_id "
                                     f"{ann['category_id']}")
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
                if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
                    self.num_degenerate += 1
                    continue
                anns.append({"box": (x0, y0, x1, y1), "ann": ann})
            if filter_empty and not anns:
                continue
            records.append({"image_id": img_id, "file_name": info["file_name"], "height": h, "width": w, "anns": anns})
        return records

    def _check_images(self) -> None:
        missing = [r["file_name"] for r in self.records
                   if not os.path.isfile(os.path.join(self.image_dir, r["file_name"]))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.records)} images of {self.ann_file} are missing from {self.image_dir}, "
                f"e.g. {missing[:3]}"
            )

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
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"image not found: {path}") from None
        except OSError as e:
            raise OSError(f"cannot read image {path}: {e}") from None
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
                if ann["category_id"] in self.strong_ids and ann.get("segmentation"):
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
