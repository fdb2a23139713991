"""Predict instance masks for a folder of images with a trained checkpoint.

``python -m opmask_fast.predict --checkpoint outputs/opmask_r18_tiny/checkpoint.pth --images DIR --output-dir OUT``
writes ``OUT/predictions.json`` (COCO results format: image_id, category_id, bbox xywh, score, segmentation RLE, plus
file_name) and ``OUT/images.json`` (the COCO ``images`` list the ids refer to); ``--visualize`` adds pictures.
The same from Python: ``opmask_fast.Predictor`` (opmask_fast/engine/predictor.py).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .engine.predictor import Predictor, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (jpg, png, ...)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.05, help="drop detections below this score")
    p.add_argument("--visualize", action="store_true", help="also write a picture per image")
    p.add_argument("--num-threads", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if not os.path.isdir(args.images):
        raise FileNotFoundError(f"image folder not found: {args.images}")
    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.images}")
    predictor = Predictor(args.checkpoint, device=args.device, score_thresh=args.score_thresh)
    os.makedirs(args.output_dir, exist_ok=True)
    results, images = [], []
    for image_id, name in enumerate(files, start=1):
        arr = read_image(os.path.join(args.images, name))
        inst = predictor(arr)
        for r, cat_name in zip(predictor.coco_results(inst, image_id), inst["category_names"]):
            results.append({**r, "file_name": name, "category_name": cat_name})
        h, w = inst["image_size"]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if args.visualize:
            from .engine.visualize import render

            pic = render(arr, inst, predictor.category_names, predictor.weak_labels)
            pic.save(os.path.join(args.output_dir, os.path.splitext(name)[0] + "_pred.png"))
    with open(os.path.join(args.output_dir, "predictions.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output_dir, "images.json"), "w") as f:
        json.dump(images, f)
    print(f"{len(results)} detections on {len(files)} images -> {os.path.join(args.output_dir, 'predictions.json')}")
    return results


if __name__ == "__main__":
    main()
