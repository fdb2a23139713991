"""Statistics of the synthetic datasets' training sets, as a Markdown table.

    python scripts/synthetic_stats.py [--datasets shapes,shapes2] [--data-images 1000,200] [--cache-dir DIR]

Per dataset: image sizes, instances per image, the fraction of ambiguous instances (box IoU >= 0.5 with another box of
the image), the fraction of weak instances whose box lies inside a strong instance's box (and strong inside weak),
object size (sqrt of the box area over the image's short side), and the spread of each class's hue over its instances
(circular standard deviation of the instances' mean hue, degrees). Generates the datasets when they are not cached.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opmask_fast.data import dataset_spec, ensure_synthetic, load_coco  # noqa: E402
from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids  # noqa: E402


def _inside(a, b) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def circular_std_deg(hues_deg) -> float:
    z = np.exp(1j * np.radians(np.asarray(hues_deg, dtype=np.float64)))
    return math.degrees(math.sqrt(max(-2 * math.log(max(abs(z.mean()), 1e-12)), 0.0)))


def instance_hues(coco, image_dir: str) -> dict[int, list[float]]:
    """Category id -> the mean hue (degrees, circular mean over the visible pixels) of each of its instances."""
    out: dict[int, list[float]] = {}
    for img in coco.dataset["images"]:
        hue = np.asarray(Image.open(os.path.join(image_dir, img["file_name"])).convert("HSV"))[..., 0] / 256 * 360
        for a in coco.imgToAnns[img["id"]]:
            z = np.exp(1j * np.radians(hue[mask_utils.decode(a["segmentation"]).astype(bool)])).mean()
            out.setdefault(a["category_id"], []).append(math.degrees(np.angle(z)) % 360)
    return out


def stats(ann_file: str, image_dir: str) -> dict:
    coco = load_coco(ann_file)
    strong_names = set(coco.dataset["info"]["strong_categories"])
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    strong = {i for i, n in names.items() if n in strong_names}
    per_image, weak_in_strong, strong_in_weak, n_weak, n_strong, sizes = [], 0, 0, 0, 0, []
    for img in coco.dataset["images"]:
        anns = coco.imgToAnns[img["id"]]
        per_image.append(len(anns))
        for a in anns:
            sizes.append(math.sqrt(a["bbox"][2] * a["bbox"][3]) / min(img["height"], img["width"]))
            others = [b for b in anns if b is not a]
            if a["category_id"] in strong:
                n_strong += 1
                strong_in_weak += any(b["category_id"] not in strong and _inside(a["bbox"], b["bbox"]) for b in others)
            else:
                n_weak += 1
                weak_in_strong += any(b["category_id"] in strong and _inside(a["bbox"], b["bbox"]) for b in others)
    amb, rest = ambiguous_ann_ids(coco, coco.getImgIds())
    weak_ids = {a["id"] for a in coco.dataset["annotations"] if a["category_id"] not in strong}
    hues = instance_hues(coco, image_dir)
    shapes = {(i["height"], i["width"]) for i in coco.dataset["images"]}
    return {
        "images": len(per_image),
        "image sizes (HxW)": (f"{min(shapes)[0]}x{min(shapes)[1]}" if len(shapes) == 1 else
                              f"{len(shapes)} sizes, short side {min(min(s) for s in shapes)}, long side "
                              f"{min(max(s) for s in shapes)}-{max(max(s) for s in shapes)}"),
        "instances per image (mean, min-max)": f"{np.mean(per_image):.2f} ({min(per_image)}-{max(per_image)})",
        "instances weak / strong": f"{n_weak} / {n_strong}",
        "ambiguous (box IoU >= 0.5), all": f"{len(amb) / (len(amb) + len(rest)):.3f}",
        "ambiguous, weak only": f"{len(amb & weak_ids) / max(len(weak_ids), 1):.3f}",
        "weak inside a strong box": f"{weak_in_strong / max(n_weak, 1):.3f}",
        "strong inside a weak box": f"{strong_in_weak / max(n_strong, 1):.3f}",
        "object size / short side (p10, p50, p90)": " / ".join(f"{v:.2f}" for v in np.percentile(sizes, [10, 50, 90])),
        "hue spread per class (deg)": ", ".join(f"{names[c]}{'*' if c in strong else ''} {circular_std_deg(h):.0f}"
                                                for c, h in sorted(hues.items())),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="shapes,shapes2")
    p.add_argument("--data-images", default=None, help="N_TRAIN,N_VAL (default: each dataset's)")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    counts = [int(v) for v in args.data_images.split(",")] if args.data_images else [None, None]
    columns = {}
    for name in args.datasets.split(","):
        start = time.time()
        paths = ensure_synthetic(dataset_spec(name, num_train=counts[0], num_val=counts[1]), args.cache_dir)
        print(f"{name}: {os.path.dirname(paths['train_images'])} (ready in {time.time() - start:.1f} s)",
              file=sys.stderr)
        columns[name] = stats(paths["train_ann"], paths["train_images"])
    rows = list(next(iter(columns.values())))
    print("| train split | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for r in rows:
        print(f"| {r} | " + " | ".join(str(c[r]) for c in columns.values()) + " |")
    print("\n(* strong class)")


if __name__ == "__main__":
    main()
