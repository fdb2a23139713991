"""Mask-supervision splits: which categories carry mask supervision ("strong") and which only boxes ("weak").

A split is resolved against the categories of a dataset and returns the set of strong COCO category ids; every other
category of the dataset is weak. Weak-class masks are never decoded (see ``CocoInstances``), so a dataset whose weak
classes have boxes only is fine.
"""

from __future__ import annotations

import logging
import numbers
import random
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)

# The 20 PASCAL VOC classes as COCO category ids (person, bicycle, car, motorcycle, airplane, bus, train, boat, bird,
# cat, dog, horse, sheep, cow, bottle, chair, couch, potted plant, dining table, tv).
VOC_CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
VOC_CATEGORY_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat", "dog", "horse", "sheep",
    "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv")
# The names of COCO's 80 detection categories: a dataset whose categories all carry one of them is "COCO's", and the
# VOC splits then pick their classes by name (whatever the ids).
COCO_CATEGORY_NAMES: frozenset[str] = frozenset(VOC_CATEGORY_NAMES + (
    "truck", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "bed", "toilet", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"))
VOC_SPLITS = ("voc", "nonvoc", "voc40")  # the named splits defined by the VOC classes

NAMED_SPLITS = ("voc", "nonvoc", "all", "voc40", "none")


def resolve_split(split: str | Sequence[str | int], categories: Sequence[dict], *, seed: int = 0) -> set[int]:
    """Returns the strong (mask-supervised) category ids of ``split``.

    Args:
        split: one of ``voc`` (the 20 VOC classes), ``nonvoc`` (all others), ``all``, ``none``, ``voc40`` (VOC plus 20
            non-VOC classes drawn with ``seed``), or a list of category names or ids (an int is an id; a string is a
            name first, then an id); a string with commas is split into such a list (``"circle,triangle"`` or
            ``"1,5,9"``; a name holding a comma in double quotes, as in CSV: ``'"cat, black",dog'``, see
            ``split_parts``). The VOC classes are found by name when the categories are COCO's (``is_coco_categories``),
            else by COCO id.
        categories: the dataset's COCO ``categories`` entries (dicts with ``id`` and ``name``).
        seed: seed of the draw of the 20 extra classes of ``voc40``.

    Raises:
        ValueError: an unknown split name, category name or id (the message lists the known ones), or a named VOC split
            on a dataset that has none of the VOC ids.
    """
    if isinstance(split, str):
        name = split.strip().lower()
        if name in NAMED_SPLITS:
            return _named(name, categories, seed)
        parts = split_parts(split)
    else:
        parts = list(split)
    if not parts:
        raise ValueError(f"empty split {split!r}; use one of {NAMED_SPLITS} or a list of category names or ids")
    return _from_list(parts, categories)


def split_parts(text: str) -> list[str]:
    """The comma-separated category names or ids of a typed split, outer spaces stripped, empty parts dropped.

    A part that starts with a double quote runs to the matching quote, commas included (``'"cat, black",dog'`` is
    ``["cat, black", "dog"]``); inside it ``""`` is one quote, as in CSV. A quote anywhere else is a plain character.

    Raises:
        ValueError: a quote opened and never closed.
    """
    parts, current, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"' and quoted and text[i + 1:i + 2] == '"':
            current.append('"')
            i += 2
            continue
        if ch == '"' and (quoted or not "".join(current).strip()):
            quoted = not quoted  # opens only at the start of a part
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise ValueError(f"split {text!r}: a double quote is not closed (quote a name holding a comma: '\"a, b\",c')")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def quote_part(name: str) -> str:
    """A category name as one part of a typed split (`split_parts` gives it back): in double quotes where it holds a
    comma or starts with a quote, its quotes doubled."""
    if "," in name or name.strip().startswith('"'):
        return '"' + name.replace('"', '""') + '"'
    return name


def is_coco_categories(categories: Sequence[dict]) -> bool:
    """True when every category carries one of COCO's 80 names (case-insensitive): COCO itself or a subset of it."""
    return bool(categories) and all(str(c["name"]).strip().lower() in COCO_CATEGORY_NAMES for c in categories)


def _named(name: str, categories: Sequence[dict], seed: int) -> set[int]:
    ids = [int(c["id"]) for c in categories]
    if name == "all":
        return set(ids)
    if name == "none":
        return set()
    if is_coco_categories(categories):
        voc = [int(c["id"]) for c in categories if str(c["name"]).strip().lower() in VOC_CATEGORY_NAMES]
        if not voc:
            raise ValueError(f"split {name!r}: none of this dataset's categories is a VOC class "
                             f"({', '.join(VOC_CATEGORY_NAMES)}); give the strong categories as a list of names or ids")
    else:
        # Not COCO's names: only COCO's ids can say which classes are VOC's (a dataset that renamed them).
        voc = [i for i in ids if i in VOC_CATEGORY_IDS]
        if voc:
            logger.warning("split %r: the category names are not COCO's, so the VOC classes are taken by COCO id: %s",
                           name, ", ".join(str(c["name"]) for c in categories if int(c["id"]) in voc))
    if not voc:
        raise ValueError(
            f"split {name!r} needs COCO's categories (VOC names or VOC ids {VOC_CATEGORY_IDS}); this dataset has "
            f"{', '.join(str(c['name']) for c in categories)} (ids {sorted(ids)}): give the strong categories as a list "
            "of names or ids instead"
        )
    if name == "voc":
        return set(voc)
    nonvoc = sorted(i for i in ids if i not in voc)
    if name == "nonvoc":
        return set(nonvoc)
    # voc40: a seeded draw keeps the split reproducible and independent of the process' global RNG.
    extra = random.Random(seed).sample(nonvoc, min(20, len(nonvoc)))
    return set(voc) | set(extra)


def _from_list(parts: Iterable[str | int], categories: Sequence[dict]) -> set[int]:
    # Names as typed are stripped: so are the dataset's (as the VOC matching reads them).
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in categories}
    known_ids = set(by_name.values())
    strong: set[int] = set()
    unknown: list[str] = []
    for p in parts:
        key = str(p).strip()
        if isinstance(p, numbers.Integral) and not isinstance(p, bool):  # an int is an id (names "0", "1" exist)
            if int(p) in known_ids:
                strong.add(int(p))
            else:
                unknown.append(key)
        elif key.lower() in by_name:
            strong.add(by_name[key.lower()])
        elif key.lstrip("-").isdigit() and int(key) in known_ids:
            strong.add(int(key))
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unknown categories in split: {unknown}; known names: {sorted(by_name)} (or their ids {sorted(known_ids)})"
        )
    return strong
