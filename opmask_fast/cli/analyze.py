"""Analyse finished runs: the OPMask paper's Figure 3 (class overlap vs weak-class mask AP) and Markdown reports.

``python -m opmask_fast.analyze RUN [RUN ...]`` takes run folders (or their metrics.json files) and

- computes each class's mean box IoU with the other ground-truth boxes of its images over the training annotations
  (the paper's overlap statistic, see :mod:`opmask_fast.analysis.figure3`);
- pools each model kind's runs (baseline, OPMask and its prior scales, read from each run's checkpoint), taking every
  class's mask AP from the run where it is weak, so two runs of complementary splits cover all classes;
- fits the least-squares line of mask AP on mean IoU per model kind and prints slope, r and the p-value of the slope
  (with fewer than --min-classes classes it says the regression is not meaningful instead), and the classes with the
  largest relative improvement over the baseline;
- writes ``report.md`` beside each run's metrics.json (metrics, per-class AP, loss curves, pictures) and, for several
  runs, a comparison ``report.md`` with the Figure 3 plot into --output-dir.

Name a run's kind yourself with ``LABEL=PATH`` (e.g. for an evaluation folder without a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..analysis.figure3 import MIN_CLASSES, class_overlap
from ..analysis.plots import plot_figure3
from ..analysis.report import write_comparison_report, write_run_report
from ..analysis.runs import analyze, format_analysis, load_run, pooling_differences
from ..data.coco import load_coco
from .checks import MAX_THREADS, check_device, check_number, check_output_dir
from .errors import UsageError, add_debug_option, debug_enabled, exit_usage

PROG = "python -m opmask_fast.analyze"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder or metrics.json, optionally LABEL=PATH")
    p.add_argument("--train-ann", default=None,
                   help="COCO instances JSON for the overlap statistic (default: the runs' training annotations)")
    p.add_argument("--output-dir", default=None,
                   help="where the comparison report and report/figure3.png go (default: the runs' common parent "
                        "folder; for one run its own folder)")
    p.add_argument("--min-classes", type=int, default=MIN_CLASSES,
                   help=f"fewest classes for a regression to be reported (default {MIN_CLASSES})")
    p.add_argument("--top", type=int, default=5, help="classes listed with the largest relative improvement")
    p.add_argument("--images", type=int, default=3,
                   help="validation images visualised per run report (0: no pictures, no model is loaded)")
    p.add_argument("--no-run-reports", action="store_true", help="write only the comparison report")
    p.add_argument("--docs-picture", default=None, metavar="PNG",
                   help="also write a small crops grid of the compared models (the README's picture)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=None)
    add_debug_option(p)
    return p


def _output_dir(runs, given: str | None) -> str:
    if given:
        return given
    if len(runs) == 1:
        return runs[0].folder
    common = os.path.commonpath([r.folder for r in runs])
    if common == os.path.dirname(common) or common in {r.folder for r in runs}:  # the root, or one run inside another
        return os.path.join("outputs", "analysis")
    return common


def prepare(argv: list[str] | None = None):
    """Parses and checks everything before any work: returns ``(args, runs, train_ann)``.

    Raises:
        SystemExit(2): with one ``python -m opmask_fast.analyze: error: ...`` line naming the file or option.
    """
    args = build_parser().parse_args(argv)

    def fail(msg: str):
        if debug_enabled(argv):
            raise UsageError(msg)
        exit_usage(PROG, msg)

    if args.min_classes < 3:
        fail(f"--min-classes must be at least 3 (a line through 2 points has no test), got {args.min_classes}")
    if args.images < 0 or args.top < 0:
        fail("--images and --top must be >= 0")
    try:
        check_number(args, "num_threads", minimum=1, maximum=MAX_THREADS)
        check_device(args.device)
    except UsageError as e:
        fail(str(e))
    try:
        runs = [load_run(a) for a in args.runs]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    folders = [r.folder for r in runs]
    if len(set(folders)) != len(folders):
        fail("a run is given twice: " + ", ".join(sorted({f for f in folders if folders.count(f) > 1})))
    for note in pooling_differences(runs):  # pooled as seeds of one model: say where they are not
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    if args.docs_picture and (args.images == 0 or sum(r.checkpoint is not None for r in runs) < 2):
        fail(f"--docs-picture {args.docs_picture} needs two runs with checkpoints and --images > 0")
    train_ann = args.train_ann
    if train_ann is None:
        known = {r.train_ann for r in runs if r.train_ann}
        if not known:
            fail("no run names its training annotations (no checkpoint.pth beside metrics.json): give --train-ann")
        if len({os.path.abspath(k) for k in known}) > 1:
            fail(f"the runs were trained on different annotation files ({', '.join(sorted(known))}): "
                 "give --train-ann")
        train_ann = known.pop()
        if not os.path.isfile(train_ann):  # a relative path is relative to where the training ran
            fail(f"annotation file not found: {train_ann} (the training annotations named in the runs' checkpoints; "
                 "run from the folder the training ran in, or give --train-ann)")
    if not os.path.isfile(train_ann):
        fail(f"annotation file not found: {train_ann}")
    try:  # last, as these create the folders
        if args.output_dir:
            check_output_dir(args.output_dir)
        if args.docs_picture:
            if os.path.isdir(args.docs_picture):
                raise UsageError(f"--docs-picture {args.docs_picture} is a folder; give the PNG file to write")
            check_output_dir(os.path.dirname(os.path.abspath(args.docs_picture)), "--docs-picture's folder")
    except UsageError as e:
        fail(str(e))
    return args, runs, train_ann


def run_analysis(args, runs, train_ann) -> dict:
    """The work after ``prepare``: overlap, regressions, plots and reports. Returns the paths and the analysis."""
    try:
        overlap = class_overlap(load_coco(train_ann))
    except (FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    unknown = sorted({k for r in runs for k in r.metrics["mask_AP_per_class"]} - set(overlap))
    if unknown:
        print(f"{PROG}: error: classes {unknown[:5]} of the runs are not in {train_ann}: the runs were evaluated "
              "on another dataset; give its training annotations with --train-ann", file=sys.stderr)
        raise SystemExit(2)
    analysis = analyze(runs, overlap, min_classes=args.min_classes, top=args.top)
    out_dir = _output_dir(runs, args.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    highlight = [k for _, _, rows in analysis.improvements for k, *_ in rows]
    figure3 = plot_figure3([(g.label, g.ap, g.regression) for g in analysis.groups], analysis.mean_iou,
                           os.path.join(out_dir, "report", "figure3.png"), highlight=highlight)
    text = format_analysis(analysis)
    print(f"mean box IoU from {train_ann}\n\n{text}\n")
    paths = {"figure3": figure3, "analysis": analysis, "run_reports": []}
    several = len(runs) > 1
    if not args.no_run_reports or not several:
        for r in runs:
            paths["run_reports"].append(write_run_report(r, analysis=analysis, figure3=figure3, images=args.images,
                                                         device=args.device))
            print(f"report: {paths['run_reports'][-1]}")
    if several:
        paths["report"] = write_comparison_report(runs, analysis, out_dir, figure3=figure3, images=args.images,
                                                  device=args.device, docs_picture=args.docs_picture,
                                                  run_reports=paths["run_reports"])
        print(f"comparison report: {paths['report']}")
    print(f"figure 3: {figure3}")
    if args.docs_picture:
        if not os.path.isfile(args.docs_picture):
            print(f"{PROG}: error: --docs-picture {args.docs_picture} not written (it needs two runs with "
                  "checkpoints and --images > 0)", file=sys.stderr)
            raise SystemExit(1)
        print(f"docs picture: {args.docs_picture}")
    return paths


def report_runs(folders: list[str], output_dir: str, *, images: int = 3, device="cpu") -> str | None:
    """The comparison report of finished run folders (used at the end of ``opmask_fast.compare``); returns its path."""
    argv = [*folders, "--output-dir", output_dir, "--images", str(images), "--device", str(device)]
    paths = run_analysis(*prepare(argv))
    return paths.get("report") or paths["run_reports"][0]


def main(argv: list[str] | None = None) -> dict:
    args, runs, train_ann = prepare(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    return run_analysis(args, runs, train_ann)


if __name__ == "__main__":
    main()
