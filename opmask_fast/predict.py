"""Predict instance masks for a folder of images with a trained checkpoint.

``python -m opmask_fast.predict --checkpoint outputs/opmask_r18_tiny/checkpoint.pth --images DIR --output-dir OUT``
writes ``OUT/predictions.json`` (COCO results format: image_id, category_id, bbox xywh, score, segmentation RLE, plus
file_name) and ``OUT/images.json`` (the COCO ``images`` list the ids refer to); ``--visualize`` adds pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from PIL import Image

from . import cli
from .data.transforms import resize, resized_shape
from .engine import preflight
from .engine.paste import encode_masks
from .engine.setup import model_from_checkpoint

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EXIT_SKIPPED = 3  # some images were unreadable and skipped; the others were written
EPILOG = """exit codes: 0 every image predicted; 2 usage error (nothing written); 3 some images could not be read and were
skipped (each named in a warning), the others' predictions are written; 1 internal error."""

logger = logging.getLogger("opmask_fast.predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.predict", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (jpg, png, ...)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.05, help="drop detections below this score")
    p.add_argument("--visualize", action="store_true", help="also write a picture per image")
    p.add_argument("--num-threads", type=int, default=None)
    cli.add_debug_option(p)
    return p


@cli.entry_point("python -m opmask_fast.predict")
@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    plan = preflight.check_predict(args, IMAGE_EXTENSIONS)  # options, image folder, checkpoint, output folder
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    files, skipped = plan.files, []
    model, meta = model_from_checkpoint(args.checkpoint, args.device, state=plan.state)
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
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # one bad file must not cost the others
            logger.warning("skipped unreadable image %s: %s", path, cli.one_line(str(e)))
            skipped.append(name)
            continue
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
    print(f"{len(results)} detections on {len(images)} images -> {os.path.join(args.output_dir, 'predictions.json')}")
    if skipped:
        print(f"python -m opmask_fast.predict: warning: skipped {len(skipped)} unreadable images: {', '.join(skipped)}",
              file=sys.stderr)
        raise SystemExit(EXIT_SKIPPED)
    return results


if __name__ == "__main__":
    main()
