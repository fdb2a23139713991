"""Predict instance masks for a folder of images with a trained checkpoint.

``python -m opmask_fast.predict --checkpoint outputs/opmask_r18_tiny/checkpoint.pth --images DIR --output-dir OUT``
writes ``OUT/predictions.json`` (COCO results format: image_id, category_id, bbox xywh, score, segmentation RLE, plus
file_name) and ``OUT/images.json`` (the COCO ``images`` list the ids refer to); ``--visualize`` adds pictures.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

from .data.transforms import resize, resized_shape
from .engine.paste import encode_masks
from .engine.setup import model_from_checkpoint

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


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if not os.path.isdir(args.images):
        raise FileNotFoundError(f"image folder not found: {args.images}")
    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.images}")
    model, meta = model_from_checkpoint(args.checkpoint, args.device)
    from .config import ModelConfig

    inp = ModelConfig.from_dict(meta["model_config"]).input
    names, cat_ids = meta["category_names"], meta["category_ids"]
    weak = {i for i, c in enumerate(cat_ids) if c not in set(meta.get("strong_ids", cat_ids))}
    os.makedirs(args.output_dir, exist_ok=True)
    results, images = [], []
    for image_id, name in enumerate(files, start=1):
        path = os.path.join(args.images, name)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise OSError(f"cannot read image {path}: {e}") from None
        h, w = arr.shape[:2]
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
        image, _ = resize(image, None, resized_shape(h, w, inp.min_size_test, inp.max_size))
        out = model([image.to(args.device)], output_sizes=[(h, w)])[0]
        keep = (out["scores"] >= args.score_thresh).nonzero().flatten()
        out = {k: v[keep] for k, v in out.items()}
        rles = encode_masks(out["masks"].cpu())
        rows = zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist())
        for i, (box, score, label) in enumerate(rows):
            results.append({"image_id": image_id, "file_name": name, "category_id": cat_ids[label],
                            "category_name": names[label], "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rles[i]})
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if args.visualize:
            from .engine.visualize import render

            render(arr, out, names, weak).save(os.path.join(args.output_dir, os.path.splitext(name)[0] + "_pred.png"))
    with open(os.path.join(args.output_dir, "predictions.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output_dir, "images.json"), "w") as f:
        json.dump(images, f)
    print(f"{len(results)} detections on {len(files)} images -> {os.path.join(args.output_dir, 'predictions.json')}")
    return results


if __name__ == "__main__":
    main()
