"""Predict instance masks for a folder of images with a trained checkpoint.

``python -m opmask_fast.predict --checkpoint outputs/opmask_r18_lite/checkpoint.pth --images DIR --output-dir OUT``
writes ``OUT/predictions.json`` (COCO results format: image_id, category_id, bbox xywh, score, segmentation RLE, plus
file_name) and ``OUT/images.json`` (the COCO ``images`` list the ids refer to); ``--visualize`` adds pictures.
The same from Python: ``opmask_fast.Predictor`` (opmask_fast/predictor.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch
from PIL import Image

from ..analysis.pictures import render
from ..predictor import Predictor, read_image
from . import errors, preflight_inference

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
EXIT_SKIPPED = 3  # some images were unreadable and skipped (or their pictures not written); the others were written
EPILOG = """exit codes: 0 every image predicted; 2 usage error (nothing written); 3 some images could not be read and were
skipped, or their --visualize pictures could not be written (each named in a warning), the others' predictions are
written; 1 internal error."""

logger = logging.getLogger("opmask_fast.predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.predict", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (jpg, png, ...)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.05, help="drop detections below this score")
    p.add_argument("--visualize", action="store_true",
                   help="also write a picture per image (the 20 best detections scoring >= 0.5; predictions.json "
                        "keeps every one above --score-thresh)")
    p.add_argument("--num-threads", type=int, default=None)
    errors.add_debug_option(p)
    return p


def picture_names(files: list[str]) -> dict[str, str]:
    """File name -> its picture's name, ``<stem>_pred.png``, or ``<file name>_pred.png`` for every file whose picture
    would share a name with another's (x.jpg and x.png; x.jpg beside x.jpg.png): never one picture over another."""
    full = set()
    while True:
        names = {f: (f if f in full else os.path.splitext(f)[0]) + "_pred.png" for f in files}
        seen: dict[str, list[str]] = {}
        for f, n in names.items():
            seen.setdefault(n, []).append(f)
        clash = {f for fs in seen.values() if len(fs) > 1 for f in fs} - full
        if not clash:  # file names differ, so names from them all differ: this ends
            return names
        full |= clash


@errors.entry_point("python -m opmask_fast.predict")
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    plan = preflight_inference.check_predict(args, IMAGE_EXTENSIONS)  # options, image folder, checkpoint, output folder
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    predictor = Predictor(args.checkpoint, device=args.device, score_thresh=args.score_thresh, state=plan.state)
    results, images, skipped, unwritten = [], [], [], []
    pictures = picture_names(plan.files) if args.visualize else {}
    for image_id, name in enumerate(plan.files, start=1):
        path = os.path.join(args.images, name)
        try:
            arr = read_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # one bad file must not cost the others
            logger.warning("skipped unreadable image %s: %s", errors.one_line(path), errors.one_line(str(e)))
            skipped.append(name)
            continue
        inst = predictor(arr)
        for r, cat_name in zip(predictor.coco_results(inst, image_id), inst["category_names"]):
            results.append({**r, "file_name": name, "category_name": cat_name})
        h, w = inst["image_size"]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if args.visualize:
            pic = render(arr, inst, predictor.category_names, predictor.weak_labels)
            picture = os.path.join(args.output_dir, pictures[name])
            try:
                pic.save(picture)
            except OSError as e:  # e.g. a name too long for the file system: the predictions are still written
                logger.warning("picture %s not written: %s", errors.one_line(picture), errors.one_line(str(e)))
                unwritten.append(name)
    with open(os.path.join(args.output_dir, "predictions.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output_dir, "images.json"), "w") as f:
        json.dump(images, f)
    print(f"{len(results)} detections on {len(images)} images -> {os.path.join(args.output_dir, 'predictions.json')}")
    problems = ([f"skipped {len(skipped)} unreadable images: {', '.join(skipped)}"] if skipped else []) + \
        ([f"no picture written for {len(unwritten)} images: {', '.join(unwritten)}"] if unwritten else [])
    if problems:
        print(f"python -m opmask_fast.predict: warning: {errors.one_line('; '.join(problems))}", file=sys.stderr)
        raise SystemExit(EXIT_SKIPPED)
    return results


if __name__ == "__main__":
    main()
