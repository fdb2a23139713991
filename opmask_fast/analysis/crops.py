"""The per-detection view: a grid of crops, one row per ground-truth instance, with the RoI in its context and, for
each model, the prior and the mask it predicts for that box (the OPMask paper's Figures 1 and 4: baseline beside
OPMask on the same RoIs).

The boxes are ground truth (``predict_masks_for_boxes``), so every model is shown the same RoI with its true class:
the pictures compare mask quality, not detection. Instances of weak classes come first, and among them the ambiguous
ones (highest box IoU with another instance of the image), as in the paper's figures.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

from ..evaluation.coco_eval import box_iou_xywh
from . import CROP_SCAN_IMAGES
from .drawing import PRIOR_CMAP, figure_to_image, literal_text, plt

MASK_RGB = np.array([0.1, 0.85, 0.3])


def pick_instances(dataset, *, strong_ids, max_rows: int = 6, scan_images: int = CROP_SCAN_IMAGES,
                   min_side: float = 12.0, per_image: int = 1) -> list[tuple[int, int, float]]:
    """Chooses ground-truth instances to show: ``(dataset index, instance index, max IoU with another box)``.

    Weak classes before strong ones, then by decreasing overlap; at most ``per_image`` per image, boxes with both
    sides at least ``min_side`` pixels, among the first ``scan_images`` images.
    """
    strong = set(strong_ids)
    found = []
    for index, rec in enumerate(dataset.records[:scan_images]):
        anns = rec["anns"]
        if not anns:
            continue
        xyxy = np.array([a["box"] for a in anns], dtype=np.float64).reshape(-1, 4)
        iou = box_iou_xywh(np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]))
        np.fill_diagonal(iou, 0.0)
        best = iou.max(axis=1) if len(anns) > 1 else np.zeros(1)
        cands = [(a["ann"]["category_id"] not in strong, float(best[i]), i) for i, a in enumerate(anns)
                 if min(xyxy[i, 2] - xyxy[i, 0], xyxy[i, 3] - xyxy[i, 1]) >= min_side]
        cands.sort(key=lambda c: (not c[0], -c[1]))
        found += [(c[0], c[1], index, c[2]) for c in cands[:per_image]]
    found.sort(key=lambda f: (not f[0], -f[1], f[2]))
    return [(index, i, iou) for _, iou, index, i in found[:max_rows]]


@torch.no_grad()
def predict_instances(model, dataset, picks, *, device="cpu") -> list[dict]:
    """For each pick, the model's ``mask_probs Tensor[28, 28]`` and ``prior Tensor[7, 7]`` on the GT box and label."""
    model = model.module if hasattr(model, "module") else model
    model.eval()
    out = []
    cache: dict[int, dict] = {}
    for index, i, _ in picks:
        if index not in cache:
            image, target = dataset[index]
            mine = [j for idx, j, _ in picks if idx == index]
            res = model.predict_masks_for_boxes([image.to(device)], [target["boxes"][mine]],
                                                [target["labels"][mine]])[0]
            cache[index] = {j: (res["mask_probs"][k].cpu().float(), res["priors"][k].cpu().float())
                            for k, j in enumerate(mine)}
        probs, prior = cache[index][i]
        out.append({"mask_probs": probs, "prior": prior})
    return out


def _resize(m: torch.Tensor, h: int, w: int) -> np.ndarray:
    return F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


@literal_text
def render_grid(dataset, picks, columns: list[tuple[str, bool, list[dict]]], *, strong_ids,
                context: float = 0.3) -> object:
    """The grid as a PIL image. ``columns``: per model ``(label, uses the prior, predict_instances(...) output)``."""
    names = dict(zip(dataset.category_ids, dataset.category_names))
    ncols = 1 + 2 * len(columns)
    fig, axes = plt.subplots(len(picks), ncols, figsize=(1.75 * ncols + 0.9, 1.75 * len(picks) + 0.5), dpi=100,
                             squeeze=False)
    im = None
    for row, (index, i, iou) in enumerate(picks):
        image = dataset.load_image(index).permute(1, 2, 0).numpy() / 255.0
        a = dataset.records[index]["anns"][i]
        x0, y0, x1, y1 = a["box"]
        H, W = image.shape[:2]
        mx, my = context * (x1 - x0), context * (y1 - y0)
        cx0, cy0 = int(max(x0 - mx, 0)), int(max(y0 - my, 0))
        cx1, cy1 = int(min(np.ceil(x1 + mx), W)), int(min(np.ceil(y1 + my), H))
        ax = axes[row, 0]
        ax.imshow(image[cy0:cy1, cx0:cx1], extent=(cx0, cx1, cy1, cy0), interpolation="nearest")
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.5))
        cat = a["ann"]["category_id"]
        weak = cat not in set(strong_ids)
        ax.set_title(f"{names[cat]}{' (weak)' if weak else ''}\nbox IoU {iou:.2f}", fontsize=8,
                     color="#b00000" if weak else "black")
        # The RoI as the mask head sees it: the box itself, resampled.
        bx0, by0, bx1, by1 = int(x0), int(y0), max(int(np.ceil(x1)), int(x0) + 1), max(int(np.ceil(y1)), int(y0) + 1)
        roi = image[by0:by1, bx0:bx1]
        rh, rw = roi.shape[:2]
        grey = roi.mean(-1)
        for c, (label, uses_prior, preds) in enumerate(columns):
            p = preds[row]
            ax = axes[row, 1 + 2 * c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1.5, interpolation="nearest")
            im = ax.imshow(_resize(p["prior"], rh, rw), cmap=PRIOR_CMAP, vmin=0, vmax=1, alpha=0.7)
            ax = axes[row, 2 + 2 * c]
            mask = _resize(p["mask_probs"], rh, rw) >= 0.5
            ax.imshow(np.where(mask[..., None], 0.4 * roi + 0.6 * MASK_RGB, roi), interpolation="nearest")
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            if row == 0:
                axes[row, 1 + 2 * c].set_title(f"{_wrap(label)}\n{'prior' if uses_prior else 'CAM (not used)'}",
                                                fontsize=8)
                ax.set_title(f"{_wrap(label)}\nmask", fontsize=8)
    if len(picks):
        axes[0, 0].set_title("RoI (GT box)\n" + axes[0, 0].get_title(), fontsize=8,
                             color=axes[0, 0].title.get_color())
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    right = 1 - 0.9 / fig.get_figwidth()  # room for the colour bar and its label
    fig.tight_layout(rect=(0, 0, right, 1))
    if im is not None:
        cax = fig.add_axes((right + 0.01, 0.1, 0.012, 0.8))
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("prior / CAM (min-max normalised)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return figure_to_image(fig)


def detection_grid(models: list[tuple[str, object]], dataset, *, strong_ids, device="cpu", max_rows: int = 6,
                   scan_images: int = CROP_SCAN_IMAGES):
    """Picks instances and renders the grid for ``models`` (``(label, model)`` pairs) on the same boxes.

    Returns a PIL image, or ``None`` when the first ``scan_images`` images hold no instance large enough to show.
    """
    picks = pick_instances(dataset, strong_ids=strong_ids, max_rows=max_rows, scan_images=scan_images)
    if not picks:
        return None
    columns = []
    for label, model in models:
        m = model.module if hasattr(model, "module") else model
        columns.append((label, bool(m.cfg.use_prior), predict_instances(m, dataset, picks, device=device)))
    return render_grid(dataset, picks, columns, strong_ids=strong_ids)


def _wrap(label: str, width: int = 22) -> str:
    """Long model names on several lines, so neighbouring column titles do not run into each other."""
    return textwrap.fill(label, width)
