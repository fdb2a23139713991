"""The main job: OPMask against its Mask R-CNN baseline on the embedded synthetic dataset, side by side.

``python -m opmask_fast.compare`` generates the dataset (once), trains each variant with the same data, schedule and
seed as separate one-thread processes (all three at once by default: they share a 2-core CPU without idle time),
evaluates them and prints one table: weak- and strong-class mask AP, ambiguous vs other mask AP, prior AP, oracle-box
mask IoU and seconds per image. ``--seeds 0,1,2`` repeats every variant per seed and reports mean +- standard deviation.
``--dataset shapes2`` runs the same study on the second synthetic dataset (other rules, see
``opmask_fast.data.synthetic_shapes2``), into ``outputs/compare_shapes2`` by default.

Variants (``opmask_fast.variants``; default the main three): the Mask R-CNN baseline (no prior), OPMask with the
paper's recipe (the min-max normalised prior added as is), and the recommended recipe: the prior at the mask head's
resolution (the CAM of a 16-wide prior head of its own over each mask RoI's 14x14 features, trained through it by the
mask-supervised RoIs), weighted per RoI by the standard deviation of that RoI's mask features (no constant tuned on any
dataset), with the box-only RoIs' masks trained by BoxInst's projection term. The study's other variants reproduce
docs/study.md. Every training uses ``--preset`` (default ``opmask_r18_lite``) with the variant's fields on top
(``opmask_fast.train --variant``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..analysis.comparison import format_comparison
from ..data import DATASETS, dataset_spec, ensure_synthetic
from ..data.loader import available_cores
from ..evaluation.metrics import write_metrics
from ..variants import MAIN_VARIANTS, VARIANTS
from . import errors
from . import train as train_command_line
from .analyze import report_runs
from .compare_checks import check_compare
from .compare_runs import Failure, on_sigterm, output_root, run_all, terminated, time_inference
from .options import parse_image_counts

PROG = "python -m opmask_fast.compare"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opmask_fast.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(MAIN_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="training seeds, comma separated (e.g. 0,1,2)")
    p.add_argument("--jobs", type=int, default=3,
                   help="trainings run at the same time (3 one-thread runs share 2 cores without idle time)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--preset", default="opmask_r18_lite",
                   help="model preset of every training (opmask_r18_tiny: the wider model of the earlier studies)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="shapes",
                   help="synthetic dataset: shapes (the embedded one) or shapes2 (other rules)")
    p.add_argument("--data-images", type=parse_image_counts, default=None, metavar="N_TRAIN,N_VAL",
                   help="image counts of the synthetic dataset (default 1000,200)")
    p.add_argument("--output-dir", default=None, help="default: outputs/compare, or outputs/compare_<dataset>")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--reuse", action="store_true", help="keep runs whose metrics.json already exists")
    p.add_argument("--time-inference", action="store_true",
                   help="after the trainings, time each variant's inference alone on 20 validation images (the "
                        "table's s/img row; the trainings' own evaluations share the machine and are not timings)")
    p.add_argument("train_args", nargs=argparse.REMAINDER,
                   help="after --: extra arguments for every opmask_fast.train run (e.g. -- --iters 600)")
    errors.add_debug_option(p)
    return p


@errors.entry_point(PROG)
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.output_dir = output_root(args)
    # The options of compare and of the trainings after -- are checked before any dataset or training.
    check_compare(args, train_parser=train_command_line.build_parser())
    # SIGTERM (a job scheduler, `kill`) unwinds as Ctrl-C does, so run_all ends the trainings it started.
    with on_sigterm(terminated):
        return _compare(args)


def _compare(args) -> dict:
    start = time.time()
    num_train, num_val = args.data_images or (None, None)
    spec = dataset_spec(args.dataset, seed=args.data_seed, num_train=num_train, num_val=num_val)
    # Rendered in one forked process per core: nothing here has started torch's thread pools yet.
    paths = ensure_synthetic(spec, args.cache_dir, workers=available_cores())
    print(f"dataset: {os.path.dirname(paths['train_images'])} ({time.time() - start:.0f} s)", flush=True)
    results, failed = run_all(args)
    if args.time_inference:
        failed += time_inference(results, args)
    table = format_comparison(results)
    wall = time.time() - start
    print()
    print(table)
    print(f"\nwall time {wall / 60:.1f} min; runs in {args.output_dir}")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "compare.md"), "w") as f:
        f.write(table + f"\n\nwall time {wall / 60:.1f} min\n")
    write_metrics({"wall_seconds": wall, "runs": {v: rs for v, rs in results.items()}},
                  os.path.join(args.output_dir, "compare.json"))
    failed += _write_report(results, args.output_dir)
    if failed:
        # The table above holds the runs that finished; the job as a whole failed.
        sys.stdout.flush()
        print(f"{PROG}: error: {len(failed)} failed: " + "; ".join(str(f) for f in failed), file=sys.stderr)
        raise SystemExit(1)
    return results


def _write_report(results: dict[str, list[dict]], output_dir: str) -> list[Failure]:
    """The comparison report (metrics, the paper's Figure 3, crops of each variant); a failure here keeps the table
    and is returned."""
    folders = [os.path.join(output_dir, f"{v}_s{m['seed']}") for v, runs in results.items() for m in runs]
    stale = os.path.join(output_dir, "report.md")
    if os.path.isfile(stale):  # an earlier compare's comparison: its figure is about to be redrawn for these runs
        os.remove(stale)
    if not folders:
        return [Failure("report", "no run finished")]
    try:
        print(f"report: {report_runs(folders, output_dir)}")
    except SystemExit as e:
        if isinstance(e.code, int) and e.code >= 128:  # a signal (SIGTERM: compare_runs.terminated) stops compare
            raise
        return [Failure("report", f"not written: {e!r}")]
    except Exception as e:  # noqa: BLE001 - the trainings are done; say why the report is missing
        return [Failure("report", f"not written: {e!r}")]
    return []


if __name__ == "__main__":
    main()
