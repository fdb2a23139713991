"""Markdown reports of finished runs: ``report.md`` beside each run's ``metrics.json`` (metrics, per-class AP, loss
curves, pictures) and one comparison report over several runs (side-by-side metrics, the paper's Figure 3, the
per-detection crops of each model kind on the same boxes). Pictures go to a ``report/`` folder beside the report."""

from __future__ import annotations

import math
import os
import shutil

from ..config import ModelConfig
from ..data.datasets import val_dataset
from ..evaluation.metrics import METRIC_LABELS
from ..training.checkpoint import model_from_checkpoint
from .crops import detection_grid
from .pictures import visualize
from .plots import plot_losses
from .runs import Analysis, Run, format_analysis, read_log


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return str(v) if isinstance(v, int) else f"{float(v):.{digits}f}"


def metrics_table(runs: list[Run]) -> str:
    """One column per run (header: run folder and model kind), one row per headline metric."""
    lines = ["| metric | " + " | ".join(f"{r.name} ({r.label})" for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for key, label in METRIC_LABELS.items():
        digits = 3 if key.startswith("seconds") else 1
        lines.append(f"| {label} | " + " | ".join(_fmt(r.metrics.get(key), digits) for r in runs) + " |")
    return "\n".join(lines)


def per_class_table(run: Run, mean_iou: dict[str, float] | None = None) -> str:
    """Each class: strong or weak, mask AP, oracle mask IoU, and its mean box IoU when known."""
    m = run.metrics
    weak = set(m.get("weak_categories") or [])
    ap, oracle = m.get("mask_AP_per_class") or {}, m.get("oracle_IoU_per_class") or {}
    head = "| class | supervision | mask AP | oracle mask IoU |" + (" mean box IoU |" if mean_iou else "")
    lines = [head, "|---|---|---|---|" + ("---|" if mean_iou else "")]
    for k in sorted(ap, key=lambda k: (k not in weak, k)):
        row = f"| {k} | {'**weak**' if k in weak else 'strong'} | {_fmt(ap.get(k))} | {_fmt(oracle.get(k))} |"
        if mean_iou:
            row += f" {_fmt(mean_iou.get(k), 3)} |"
        lines.append(row)
    return "\n".join(lines)


def load_model_and_data(run: Run, device="cpu"):
    """The run's model and its validation dataset (the split it was trained with). Raises when either is missing."""
    if run.checkpoint is None:
        raise FileNotFoundError(f"no checkpoint.pth in {run.folder}")
    model, meta = model_from_checkpoint(run.checkpoint, device)
    data = meta.get("data") or {}
    if not data.get("val_ann") or not data.get("val_images"):
        raise ValueError(f"{run.checkpoint} names no validation data")
    # The stored strong ids are the exact split, whatever seed a drawn split (voc40) used.
    split = meta["strong_ids"] if meta.get("strong_ids") else meta.get("split")
    dataset = val_dataset(data, ModelConfig.from_dict(meta["model_config"]).input, split)
    return model, dataset


def _pictures(run: Run, folder: str, images: int, device) -> tuple[list[str], str | None]:
    """Visualises ``images`` validation images and the crops grid; returns (paths, why not)."""
    try:
        model, dataset = load_model_and_data(run, device)
    except (FileNotFoundError, ValueError, OSError) as e:
        return [], str(e)
    files = visualize(model, dataset, num_images=images, output_dir=folder, strong_ids=dataset.strong_ids,
                      device=device)
    return files, None


def write_run_report(run: Run, *, analysis: Analysis | None = None, figure3: str | None = None, images: int = 3,
                     device="cpu") -> str:
    """Writes ``report.md`` beside the run's metrics.json and its pictures into ``report/``; returns the path.

    Args:
        analysis: the Figure 3 analysis the run took part in (adds each class's mean box IoU and the regression).
        figure3: a Figure 3 PNG to include (copied into ``report/`` when it is elsewhere).
        images: validation images to visualise with the run's model (0: none, the model is not loaded).
    """
    pics = os.path.join(run.folder, "report")
    os.makedirs(pics, exist_ok=True)
    m = run.metrics
    out = [f"# {run.name}: {run.label}", ""]
    split = ", ".join(m.get("strong_categories") or []) or "none"
    out += [f"- strong (mask-supervised) classes: {split}",
            f"- weak (box-only) classes: {', '.join(m.get('weak_categories') or []) or 'none'}",
            f"- metrics: `{os.path.basename(run.metrics_path)}`; evaluated on {m.get('num_images', '?')} images"]
    if run.train_ann:
        out.append(f"- training annotations: `{run.train_ann}`")
    tc = run.meta.get("train_config") or {}
    if tc:
        out.append(f"- training: {tc.get('max_iter')} iterations x {tc.get('batch_size')} images, seed {tc.get('seed')}"
                   + (f", {m['train_seconds']:.0f} s" if m.get("train_seconds") else ""))
    out += ["", "## Metrics", "", metrics_table([run]), "", "## Mask AP per class", "",
            per_class_table(run, analysis.mean_iou if analysis else None), ""]
    if analysis is not None:
        g = next((g for g in analysis.groups if run in g.runs), None)
        if g is not None:
            out += ["## Overlap and weak-class mask AP (the paper's Figure 3)", "",
                    f"{g.label}, pooled over {', '.join(r.name for r in g.runs)}: {g.regression.describe()}", ""]
        if figure3:
            dest = os.path.join(pics, "figure3.png")
            if not (os.path.exists(dest) and os.path.samefile(figure3, dest)):
                shutil.copyfile(figure3, dest)
            out += ["![Figure 3](report/figure3.png)", ""]
    log = read_log(run)
    if log:
        plot_losses([(run.name, log)], os.path.join(pics, "losses.png"))
        out += ["## Training losses", "", "![losses](report/losses.png)", ""]
    if images > 0:
        files, why = _pictures(run, pics, images, device)
        out += ["## Pictures", ""]
        if why:
            out += [f"pictures skipped: {why}", ""]
        for f in files:
            name = os.path.basename(f)
            caption = ("ground-truth boxes: RoI, prior and mask per instance (weak, ambiguous first)"
                       if name == "crops.png" else name)
            out += [f"![{caption}](report/{name})", ""]
    path = os.path.join(run.folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path


def comparison_models(analysis: Analysis, device="cpu") -> tuple[list, object | None, str | None]:
    """One model per kind, all trained with the same split as the first kind's first run (so the crops show each
    kind on the same boxes with the same weak classes): ``([(label, model)], dataset, why not)``."""
    ref = next((r for g in analysis.groups for r in g.runs if r.checkpoint), None)
    if ref is None:
        return [], None, "no run has a checkpoint.pth"
    split = ref.meta.get("split")
    models, dataset = [], None
    for g in analysis.groups:
        run = next((r for r in g.runs if r.checkpoint and r.meta.get("split") == split), None)
        if run is None:
            continue
        try:
            model, ds = load_model_and_data(run, device)
        except (FileNotFoundError, ValueError, OSError) as e:
            return [], None, str(e)
        dataset = dataset or ds
        models.append((g.label, model))
    return models, dataset, None


def write_comparison_report(runs: list[Run], analysis: Analysis, folder: str, *, figure3: str, images: int = 3,
                            device="cpu", docs_picture: str | None = None, run_reports: list[str] = ()) -> str:
    """Writes ``folder/report.md``: metrics side by side, Figure 3 with its numbers, losses of every run, and the
    crops grid of each model kind on the same ground-truth boxes. Returns the path."""
    pics = os.path.join(folder, "report")
    os.makedirs(pics, exist_ok=True)
    rel = os.path.relpath(figure3, folder)
    out = ["# Comparison", "", metrics_table(runs), "",
           "## Overlap and weak-class mask AP (the paper's Figure 3)", "",
           "Mean box IoU of each class with the other ground-truth boxes of its images (training annotations), "
           "against its mask AP taken from the runs where the class is weak; one least-squares line per model kind "
           "(t-test of the slope, two-sided).", "", format_analysis(analysis), "", f"![Figure 3]({rel})", ""]
    logs = [(f"{r.name}: {r.label}", read_log(r)) for r in runs]
    if any(log for _, log in logs):
        plot_losses([(n, log) for n, log in logs if log], os.path.join(pics, "losses.png"))
        out += ["## Training losses", "", "![losses](report/losses.png)", ""]
    if images > 0:
        models, dataset, why = comparison_models(analysis, device)
        grid = None
        if models:
            grid = detection_grid(models, dataset, strong_ids=dataset.strong_ids, device=device)
        out += ["## The same ground-truth boxes in each model", ""]
        if grid is not None:
            grid.save(os.path.join(pics, "crops.png"))
            out += ["RoI, then each model's prior (or the baseline's unused CAM) and mask, weak and ambiguous "
                    "instances first.", "", "![crops](report/crops.png)", ""]
            if docs_picture:
                small = detection_grid(models, dataset, strong_ids=dataset.strong_ids, device=device, max_rows=3)
                os.makedirs(os.path.dirname(os.path.abspath(docs_picture)), exist_ok=True)
                # A palette image: a few times smaller in the repository, no visible loss at this size.
                small.quantize(colors=128).save(docs_picture, optimize=True)
        else:
            out += [f"no pictures: {why or 'no instance large enough to show'}", ""]
    if run_reports:
        out += ["## Reports of the runs", ""] + [f"- [{os.path.relpath(p, folder)}]({os.path.relpath(p, folder)})"
                                                 for p in run_reports] + [""]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path
