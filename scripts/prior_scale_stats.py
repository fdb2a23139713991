"""How visible is the object mask prior? std(RoI mask features) / std(prior), measured on real images.

The prior is a [0, 1] map added to the RoI mask features; whether the mask head can use it depends on how wide the
features spread next to it. This pools the mask features of each ground-truth box of the first N images (the prior
from the box's own box-head features and its GT class, as in training) and prints the medians of std(features),
std(prior), their ratio, and the features' max - min: the gain that `prior_scale="feature_std"` / `"feature_range"`
would apply.

    python scripts/prior_scale_stats.py --checkpoint outputs/compare/opmask_s0/checkpoint.pth       # a trained model
    python scripts/prior_scale_stats.py --preset opmask_r50_coco --weights R-50.pkl \\
        --ann instances_val2017.json --images val2017/ --num-images 50                            # before training
"""

from __future__ import annotations

import argparse
import sys

import torch

from opmask_fast.config import get_preset
from opmask_fast.data import CocoInstances, val_dataset
from opmask_fast.modeling.roi_heads.prior import prior_statistics
from opmask_fast.training.checkpoint import model_from_checkpoint
from opmask_fast.training.initial_weights import build_with_weights, configure_weights


def measure(model, dataset: CocoInstances, num_images: int) -> dict[str, float]:
    """Median per-RoI statistics over the GT boxes of the first `num_images` images of `dataset`."""
    model.eval()
    with prior_statistics(model) as records:
        for index in range(min(num_images, len(dataset))):
            image, target = dataset[index]
            if target["boxes"].shape[0]:
                model.predict_masks_for_boxes([image], [target["boxes"]], [target["labels"]])
    stats = {k: torch.cat([s[k] for s in records]) for k in ("feature_std", "feature_range", "prior_std")}
    if stats["prior_std"].numel() == 0:
        raise ValueError("no ground-truth box in the images measured")
    med = lambda t: float(t.median())  # noqa: E731
    ratio = stats["feature_std"] / stats["prior_std"].clamp(min=1e-6)
    return {"rois": int(ratio.numel()), "feature_std": med(stats["feature_std"]), "prior_std": med(stats["prior_std"]),
            "std_ratio": med(ratio), "feature_range": med(stats["feature_range"])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint of opmask_fast.train (its validation data by default)")
    p.add_argument("--preset", default="opmask_r50_coco", help="without --checkpoint: the model preset")
    p.add_argument("--weights", help="without --checkpoint: backbone weights file (as train --weights)")
    p.add_argument("--ann", help="COCO instances JSON")
    p.add_argument("--images", help="image folder")
    p.add_argument("--split", default="all", help="strong classes (only matters for bookkeeping here)")
    p.add_argument("--num-images", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data, cfg_input, model = {}, get_preset(args.preset).input, None
    if args.checkpoint:
        model, meta = model_from_checkpoint(args.checkpoint)
        data = dict(meta.get("data", {}))
        cfg_input = get_preset(meta.get("preset", args.preset)).input
    if args.ann or args.images:
        data.update(val_ann=args.ann, val_images=args.images)
    if not data.get("val_ann") or not data.get("val_images"):
        p.error("give --ann and --images (or a --checkpoint that names its validation data)")
    dataset = val_dataset(data, cfg_input, args.split)
    if model is None:
        cfg, weights = get_preset(args.preset), None
        if args.weights:  # backbone weights or a whole model of the same classes (anything else is an error)
            cfg, weights = configure_weights(cfg, args.weights)
        cfg.num_classes, cfg.use_prior = len(dataset.category_ids), True
        model = build_with_weights(cfg, weights)
    with torch.no_grad():
        result = measure(model, dataset, args.num_images)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
