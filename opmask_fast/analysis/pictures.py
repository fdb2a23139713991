"""Pictures of predictions (matplotlib, Agg): per image, the masks with numbered boxes and labels that avoid each
other, and beside them each detection's prior inside its own box with a colour bar (the OPMask paper's Figure 7);
per detection, a grid of crops (:mod:`opmask_fast.analysis.crops`, the paper's Figures 1 and 4)."""

from __future__ import annotations

import os

import numpy as np
import torch
from matplotlib.patches import Rectangle

from ..evaluation.mask_encoding import paste_maps
from .crops import detection_grid
from .drawing import PRIOR_CMAP, Image, colour, figure_to_image, literal_text, plt
from .label_placement import around_box, place_labels

def draw_box_labels(ax, boxes: list, texts: list[str], colours: list, *, bounds: tuple[int, int], fontsize=8) -> None:
    """Boxes ``(x0, y0, x1, y1)`` in image pixels (an ``imshow`` axes) with their labels, placed so that they avoid
    each other and stay inside the image (``bounds`` = (H, W))."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()  # measures text without drawing the figure (a full draw is ~0.1 s)
    # Display pixels per image pixel: text sizes are measured in the former, placed in the latter.
    (ax0, _), (ax1, _) = ax.transData.transform([(0, 0), (1, 0)])
    scale = abs(ax1 - ax0) or 1.0
    artists, cands = [], []
    for box, text, c in zip(boxes, texts, colours):
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec=c, lw=1.5))
        t = ax.text(0, 0, text, fontsize=fontsize, color="white" if np.mean(c) < 0.6 else "black", ha="left",
                    va="top", zorder=5, bbox=dict(boxstyle="square,pad=0.15", fc=c, ec="none", alpha=0.85))
        bb = t.get_window_extent(renderer)
        pad = 0.3 * fontsize  # the bbox padding around the text, in points ~ pixels at 72 dpi; measured generously
        w, h = (bb.width + pad * fig.dpi / 72) / scale, (bb.height + pad * fig.dpi / 72) / scale
        artists.append((t, pad * fig.dpi / 72 / scale / 2))
        cands.append(around_box(box, w, h))
    chosen = place_labels(cands, bounds=(0, 0, bounds[1], bounds[0]))
    for (t, half_pad), r in zip(artists, chosen):
        t.set_position((r[0] + half_pad, r[1] + half_pad))


@literal_text
def render(image: np.ndarray, out: dict, names: list[str], weak: set[int], *, score_thresh: float = 0.5,
           show_priors: bool = True, max_dets: int = 20) -> Image.Image:
    """``image: uint8 [H, W, 3]`` and one model output (at the image's size) -> a picture: masks and numbered labels
    left, each detection's prior inside its own box right (the higher-scoring detection on top), with a colour bar.

    Weak-class labels carry a ``*``. At most ``max_dets`` detections at or above ``score_thresh`` are drawn.
    """
    keep = (out["scores"] >= score_thresh).nonzero().flatten().tolist()
    keep = sorted(keep, key=lambda i: -float(out["scores"][i]))[:max_dets]
    h, w = image.shape[:2]
    priors = out.get("priors")
    panels = 2 if show_priors and priors is not None else 1
    side = 4.6  # inches of the longer image side: small images are enlarged so text stays readable
    fw, fh = (side, side * h / w) if w >= h else (side * w / h, side)
    fig, axes = plt.subplots(1, panels, figsize=(fw * panels + (1.0 if panels == 2 else 0.2), fh + 0.5), dpi=110,
                             squeeze=False)
    boxes = out["boxes"].cpu().float()
    canvas = image.astype(np.float32) / 255.0
    for i in keep:
        m = out["masks"][i].cpu().numpy().astype(bool)
        canvas[m] = 0.45 * canvas[m] + 0.55 * colour(i)
    ax = axes[0, 0]
    ax.imshow(canvas.clip(0, 1), interpolation="nearest")
    ax.set_title(f"{len(keep)} detections (score >= {score_thresh:g}; * = weak class)", fontsize=9)
    texts = [f"{n + 1} {names[int(out['labels'][i])]}{'*' if int(out['labels'][i]) in weak else ''} "
             f"{float(out['scores'][i]):.2f}" for n, i in enumerate(keep)]
    draw_box_labels(ax, [boxes[i].tolist() for i in keep], texts, [colour(i) for i in keep], bounds=(h, w))
    if panels == 2:
        ax = axes[0, 1]
        grey = image.astype(np.float32).mean(-1) / 255.0
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1.6, interpolation="nearest")  # dimmed: the prior stands out
        heat = np.full((h, w), np.nan, dtype=np.float32)
        if keep:
            maps = paste_maps(priors[keep].cpu(), boxes[keep], (h, w), threshold=None).numpy()
            ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None] + 0.5  # pixel centres
            for j in reversed(range(len(keep))):  # lowest score first: the best detection's prior ends on top
                x0, y0, x1, y1 = boxes[keep[j]].tolist()
                heat = np.where((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1), maps[j], heat)
        im = ax.imshow(np.ma.masked_invalid(heat), cmap=PRIOR_CMAP, vmin=0, vmax=1, alpha=0.85,
                       interpolation="nearest")
        ax.set_title("object mask prior of each detection, in its box", fontsize=9)
        draw_box_labels(ax, [boxes[i].tolist() for i in keep], [str(n + 1) for n in range(len(keep))],
                        [colour(i) for i in keep], bounds=(h, w))
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("prior (min-max normalised CAM)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    for a in axes.flat:
        a.set_axis_off()
    fig.tight_layout()
    return figure_to_image(fig)


@torch.no_grad()
def visualize(model, dataset, *, num_images: int, output_dir: str, strong_ids, device="cpu",
              score_thresh: float = 0.5, crops: bool = True) -> list[str]:
    """Writes ``vis_<image id>.png`` for the first ``num_images`` images of ``dataset`` and, with ``crops``, one
    ``crops.png`` grid of ground-truth instances (weak and ambiguous first) with this model's prior and mask.

    Returns the paths written.
    """
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
    if crops and num_images > 0:
        grid = detection_grid([("model", model)], dataset, strong_ids=strong_ids, device=device)
        if grid is not None:
            files.append(os.path.join(output_dir, "crops.png"))
            grid.save(files[-1])
    return files
