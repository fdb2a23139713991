"""Pictures of predictions: masks with boxes and labels, and beside them each detection's prior pasted into its box
(the OPMask paper's Figures 1 and 7)."""

from __future__ import annotations

import colorsys
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from .paste import paste_maps


def _colour(i: int) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)) * 255


def render(image: np.ndarray, out: dict, names: list[str], weak: set[int], *, score_thresh: float = 0.5,
           show_priors: bool = True) -> Image.Image:
    """``image: uint8 [H, W, 3]`` and one model output (at the image's size) -> a picture, masks left, priors right.

    Weak-class labels carry a ``*``. Detections below ``score_thresh`` are left out.
    """
    keep = (out["scores"] >= score_thresh).nonzero().flatten().tolist()
    # Small images are enlarged (nearest neighbour) so that labels stay readable.
    up = max(1, 384 // max(image.shape[:2]))
    image = image.repeat(up, 0).repeat(up, 1)
    h, w = image.shape[:2]
    canvas = image.astype(np.float32).copy()
    heat = np.zeros((h, w), dtype=np.float32)
    boxes = out["boxes"].cpu().float() * up
    priors = paste_maps(out["priors"][keep].cpu(), boxes[keep], (h, w), threshold=None) if (
        show_priors and out.get("priors") is not None and keep) else None
    for j, i in enumerate(keep):
        m = out["masks"][i].cpu().numpy().astype(bool).repeat(up, 0).repeat(up, 1)
        canvas[m] = 0.45 * canvas[m] + 0.55 * _colour(i)
        if priors is not None:
            heat = np.maximum(heat, priors[j].numpy())
    left = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(left)
    for i in keep:
        x0, y0, x1, y1 = boxes[i].tolist()
        label = int(out["labels"][i])
        draw.rectangle([x0, y0, x1, y1], outline=tuple(int(c) for c in _colour(i)))
        text = f"{names[label]}{'*' if label in weak else ''} {float(out['scores'][i]):.2f}"
        draw.text((x0 + 1, y0 + 1), text, fill=(255, 255, 255))
    if priors is None:
        return left
    # The prior as a heat map over a dimmed copy of the image.
    hm = np.stack([heat, heat ** 2, 1 - heat], -1) * 255
    right = Image.fromarray((0.35 * image + 0.65 * hm).clip(0, 255).astype(np.uint8))
    both = Image.new("RGB", (2 * w + 4, h), (0, 0, 0))
    both.paste(left, (0, 0))
    both.paste(right, (w + 4, 0))
    return both


@torch.no_grad()
def visualize(model, dataset, *, num_images: int, output_dir: str, strong_ids, device="cpu",
              score_thresh: float = 0.5) -> list[str]:
    """Writes ``vis_<image id>.png`` for the first ``num_images`` images of ``dataset``; returns the paths."""
    model = model.module if hasattr(model, "module") else model
    model.eval()
    os.makedirs(output_dir, exist_ok=True)
    weak = {dataset.id_to_contiguous[c] for c in dataset.category_ids if c not in set(strong_ids)}
    files = []
    for index in range(min(num_images, len(dataset))):
        image, target = dataset[index]
        h, w = target["orig_size"]
        out = model([image.to(device)], output_sizes=[(h, w)])[0]
        original = dataset.load_image(index).permute(1, 2, 0).numpy().astype(np.uint8)
        pic = render(original, out, dataset.category_names, weak, score_thresh=score_thresh)
        path = os.path.join(output_dir, f"vis_{target['image_id']}.png")
        pic.save(path)
        files.append(path)
    return files
