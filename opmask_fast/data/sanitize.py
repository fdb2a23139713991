"""The one rule for unusable annotations: a bad box drops the annotation, a bad mask leaves it box-only.

- The box decides whether an instance exists. A ``bbox`` that is not four numbers, has a NaN or infinite coordinate, a
  negative width or height, reaches more than ``BOX_TOLERANCE`` pixels outside the image, or is thinner than
  ``MIN_BOX_SIDE`` pixels once clipped to the image drops the whole annotation (reasons ``bbox_*``). Boxes within the
  tolerance are clipped to the image.
- The segmentation decides whether the instance has a mask. A missing, empty or malformed segmentation, or one that
  covers no pixel of the image, removes the mask and keeps the box (reasons ``mask_*``): the instance still trains the
  detector and the prior, never the mask head, and in evaluation it counts for box AP and is ignored by mask AP.

Nothing unusable is passed on: ``CocoInstances`` counts every reason (``dropped``) and logs the annotation ids.
"""

from __future__ import annotations

import math
from numbers import Real

from pycocotools import mask as mask_utils

BOX_TOLERANCE = 2.0  # pixels a box may reach past the image border (rounding in converted datasets); clipped away
MIN_BOX_SIDE = 1.0  # boxes thinner than this (in original pixels) carry no learnable extent
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the ids pycocotools' evaluation can hold

DROP_REASONS = {
    "bbox_invalid": "bbox is not a list of four numbers",
    "bbox_nonfinite": "bbox has a NaN or infinite coordinate",
    "bbox_negative_size": "bbox has a negative width or height",
    "bbox_outside_image": f"bbox reaches more than {BOX_TOLERANCE:g} px outside the image",
    "bbox_degenerate": f"bbox is thinner than {MIN_BOX_SIDE:g} px inside the image",
}
BOX_ONLY_REASONS = {
    "mask_missing": "no segmentation",
    "mask_empty": "empty segmentation (no polygon of three points, or no RLE counts)",
    "mask_invalid": "malformed segmentation (odd or non-numeric polygon, a vertex eight image sizes past the "
                    "border, RLE of the wrong size)",
    "mask_zero_area": "segmentation covers no pixel of the image",
}
REASONS = {**DROP_REASONS, **BOX_ONLY_REASONS}


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def is_finite_number(v) -> bool:
    """A real number (not a bool) that is finite as a float: JSON's integers beyond a float's range (1e309) are not."""
    if not _is_number(v):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_box(bbox, height: int, width: int) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """Applies the box rule to a COCO ``[x, y, w, h]`` box.

    Returns:
        ``(box, None)`` with the box as xyxy clipped to the image, or ``(None, reason)`` with a ``DROP_REASONS`` key.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None, "bbox_invalid"
    if not all(is_finite_number(v) for v in bbox):
        return None, "bbox_nonfinite"
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return None, "bbox_negative_size"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return None, "bbox_outside_image"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        return None, "bbox_degenerate"
    return (x0, y0, x1, y1), None


def check_segmentation(segm, height: int, width: int) -> tuple[float, str | None]:
    """Applies the mask rule to a COCO segmentation (polygons, uncompressed or compressed RLE).

    Returns:
        ``(area_in_pixels, None)`` for a usable mask, or ``(0.0, reason)`` with a ``BOX_ONLY_REASONS`` key. Nothing is
        decoded unless the segmentation is well-formed (pycocotools trusts RLE counts and would read past the mask).
    """
    if segm is None:
        return 0.0, "mask_missing"
    if isinstance(segm, (list, tuple)):
        if not all(isinstance(p, (list, tuple)) for p in segm):
            return 0.0, "mask_invalid"
        if any(len(p) % 2 or not all(is_finite_number(v) for v in p) for p in segm):
            return 0.0, "mask_invalid"
        polys = [[float(v) for v in p] for p in segm if len(p) >= 6]  # shorter ones are annotation noise
        if not polys:
            return 0.0, "mask_empty"
        # pycocotools rasterises every edge at 5x resolution in int32: a vertex far outside the image takes memory
        # in proportion (1e7 px: 1.2 GB for one polygon) or overflows and crashes. Eight image sizes past the border
        # a polygon is a broken annotation, not a mask.
        far = 8 * max(height, width, 1)
        if any(not (-far <= v <= far + width) for p in polys for v in p[::2]) or \
                any(not (-far <= v <= far + height) for p in polys for v in p[1::2]):
            return 0.0, "mask_invalid"
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict):
        counts, size = segm.get("counts"), segm.get("size")
        if counts is None or (hasattr(counts, "__len__") and len(counts) == 0):
            return 0.0, "mask_empty"
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and [_int(s) for s in size] == [height, width]):
            return 0.0, "mask_invalid"
        if isinstance(counts, (list, tuple)):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) \
                    or sum(counts) != height * width:
                return 0.0, "mask_invalid"
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
        elif isinstance(counts, (str, bytes)):
            runs = compressed_counts(counts)
            if runs is None or any(c < 0 for c in runs) or sum(runs) != height * width:
                return 0.0, "mask_invalid"
            rle = {"size": [height, width], "counts": counts if isinstance(counts, bytes) else counts.encode("ascii")}
        else:
            return 0.0, "mask_invalid"
    else:
        return 0.0, "mask_invalid"
    area = float(mask_utils.area(rle))
    return (area, None) if area > 0 else (0.0, "mask_zero_area")


def short_repr(v) -> str:
    """``repr(v)``, cut to 40 characters (a JSON integer or an option may have hundreds of digits)."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(v) -> int | None:
    return int(v) if is_finite_number(v) and float(v).is_integer() else None


def compressed_counts(counts: str | bytes) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None when it is malformed."""
    try:
        s = counts.encode("ascii") if isinstance(counts, str) else counts
    except UnicodeEncodeError:
        return None
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                return None
            c = s[p] - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def box_polygon(box: tuple[float, float, float, float]) -> list[list[float]]:
    """The xyxy box as a COCO polygon: the region a box-only ground truth covers when evaluation ignores it."""
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def summarize(counts: dict[str, int], examples: dict[str, list]) -> str:
    """One log line: dropped annotations and box-only masks per reason, with a few annotation ids each."""
    def part(reasons):
        items = [f"{r} {counts[r]} (ids {', '.join(map(str, examples.get(r, [])[:5]))}"
                 f"{', ...' if counts[r] > 5 else ''})" for r in reasons if counts.get(r)]
        return "; ".join(items)

    dropped = sum(counts.get(r, 0) for r in DROP_REASONS)
    box_only = sum(counts.get(r, 0) for r in BOX_ONLY_REASONS)
    lines = []
    if dropped:
        lines.append(f"{dropped} annotations dropped: {part(DROP_REASONS)}")
    if box_only:
        lines.append(f"{box_only} masks dropped, boxes kept: {part(BOX_ONLY_REASONS)}")
    return " | ".join(lines)



def check_structure(data, ann_file: str) -> None:
    """Raises ValueError naming the image, category or annotation id when a COCO instances file cannot be indexed.

    Ids must be integers and unique, every annotation must name a listed image and category, and images need a
    ``file_name`` and a positive ``height`` and ``width`` (the box and mask rules depend on them).
    """
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise ValueError(f"annotation file {ann_file} is not a COCO instances file (needs lists of images, "
                         "annotations, categories)")
    if not data["categories"]:
        raise ValueError(f"annotation file {ann_file} lists no categories")
    image_ids = _unique_ids(data["images"], "image", ann_file)
    for im in data["images"]:
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{ann_file}: image {im['id']} has no file_name")
        for key in ("height", "width"):
            v = _int(im.get(key))
            if v is None or v < 1:
                raise ValueError(f"{ann_file}: image {im['id']} ({im['file_name']}) has {key} {short_repr(im.get(key))}; "
                                 "it must be a positive integer")
    cat_ids = _unique_ids(data["categories"], "category", ann_file)
    names = [c.get("name") for c in data["categories"]]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{ann_file}: every category needs a name; got {names}")
    keys = [n.strip().lower() for n in names]  # a split names a class by its name, case and outer spaces aside
    dup = sorted({n for n, k in zip(names, keys) if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{ann_file}: category names {dup} appear more than once (splits name classes by name)")
    _unique_ids(data["annotations"], "annotation", ann_file)
    for ann in data["annotations"]:
        for key, known in (("image_id", image_ids), ("category_id", cat_ids)):
            v = ann.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v not in known:
                what = "image" if key == "image_id" else "category"
                raise ValueError(f"{ann_file}: annotation {ann['id']} has {key} {v!r}, which is not the id "
                                 f"of a listed {what}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{ann_file}: annotation {ann['id']} has iscrowd {ann['iscrowd']!r}; it must be 0 or 1")


def _unique_ids(items: list, what: str, ann_file: str) -> set:
    ids = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{ann_file}: {what} entry #{i} is a {type(item).__name__}, not an object")
        v = item.get("id")
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{ann_file}: {what} entry #{i} has id {short_repr(v)}; ids must be integers")
        if not INT64_MIN <= v <= INT64_MAX:  # COCOeval's numpy id arrays would turn to float and lose such ids
            raise ValueError(f"{ann_file}: {what} entry #{i} has id {short_repr(v)}, outside the 64-bit integers "
                             f"[{INT64_MIN}, {INT64_MAX}]")
        if v in ids:
            raise ValueError(f"{ann_file}: {what} id {v} appears more than once")
        ids.add(v)
    return ids
