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
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from ..analysis.comparison import format_comparison
from ..data import DATASETS, dataset_spec, ensure_synthetic
from ..data.loader import available_cores
from ..evaluation.metrics import write_metrics
from ..variants import MAIN_VARIANTS, VARIANTS
from . import errors
from . import train as train_command_line
from .analyze import report_runs
from .compare_checks import check_compare
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


def train_command(variant: str, seed: int, args, out: str) -> list[str]:
    extra = [a for a in args.train_args if a != "--"]
    cmd = [sys.executable, "-m", "opmask_fast.train", "--quiet", "--preset", args.preset, "--seed", str(seed),
           "--dataset", args.dataset, "--data-seed", str(args.data_seed), "--num-threads", str(args.threads),
           "--output-dir", out]
    if args.data_images:
        cmd += ["--data-images", ",".join(str(n) for n in args.data_images)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    return cmd + ["--variant", variant, *extra]


RUN_COMMAND = "compare_command.json"  # in each run folder: the training command compare gave it (for --reuse)
# Options of that command that do not change a run's result: --reuse compares the command without them.
_NOT_RESULTS = {"--output-dir": 1, "--num-threads": 1, "--cache-dir": 1, "--quiet": 0}


def _settings(cmd: list[str]) -> list[str]:
    """The training command without the interpreter and the options of `_NOT_RESULTS` (with their values)."""
    out, skip = [], 0
    for token in cmd[1:]:
        if skip:
            skip -= 1
        elif token in _NOT_RESULTS:
            skip = _NOT_RESULTS[token]
        else:
            out.append(token)
    return out


def _launch(variant: str, seed: int, args, out: str) -> subprocess.Popen:
    cmd = train_command(variant, seed, args, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RUN_COMMAND), "w") as f:
        json.dump(_settings(cmd), f)
    log = open(os.path.join(out, "log.txt"), "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _reusable(variant: str, seed: int, args, out: str) -> bool:
    """With --reuse: the run finished (metrics.json) and, where compare recorded its training command, with the same
    settings as now (other options after --, another preset or dataset retrain it; another folder or thread count
    does not)."""
    if not (args.reuse and os.path.isfile(os.path.join(out, "metrics.json"))):
        return False
    try:
        with open(os.path.join(out, RUN_COMMAND)) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        recorded = None
    if recorded == _settings(train_command(variant, seed, args, out)):
        return True
    print(f"{variant} seed {seed}: trained with other settings than this compare's, trained again", flush=True)
    return False


@contextlib.contextmanager
def _on_sigterm(handler) -> Iterator[None]:
    """SIGTERM handled by ``handler`` inside the block, the previous handling restored after it (signals are the main
    thread's: elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _stop(running: dict) -> None:
    """Ends the trainings still running (compare itself was interrupted or killed): none outlives it."""
    if not running:
        return
    with _on_sigterm(signal.SIG_IGN):  # a second SIGTERM must not stop the stopping
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def output_root(args) -> str:
    """``--output-dir``, or outputs/compare (embedded dataset) / outputs/compare_<dataset>."""
    if args.output_dir:
        return args.output_dir
    return os.path.join("outputs", "compare" if args.dataset == "shapes" else f"compare_{args.dataset}")


@dataclass
class Failure:
    """A child of compare that did not give what it should: a training (with its evaluation), an inference timing or
    the report."""

    what: str  # e.g. "baseline seed 0"
    reason: str  # e.g. "exit 3", "killed by signal 9", "no metrics.json"
    log: str | None = None

    def __str__(self) -> str:
        return f"{self.what} ({self.reason}" + (f", see {self.log})" if self.log else ")")


def _exit_reason(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"


def run_all(args) -> tuple[dict[str, list[dict]], list[Failure]]:
    """Trains every (variant, seed) not reused; returns the metrics of the runs that finished, per variant, and the
    failures (a training that exited non-zero or wrote no metrics.json)."""
    args.output_dir = output_root(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    # Seed-major order: with two jobs the first seed of every variant finishes first.
    queue = [(v, s) for s in seeds for v in variants]
    running: dict[tuple, tuple] = {}
    failed = []
    start = time.time()
    try:
        while queue or running:
            while queue and len(running) < max(args.jobs, 1):
                v, s = queue.pop(0)
                out = os.path.join(args.output_dir, f"{v}_s{s}")
                if _reusable(v, s, args, out):
                    continue
                if os.path.isfile(os.path.join(out, "metrics.json")):  # a failed run must not show older numbers
                    os.remove(os.path.join(out, "metrics.json"))
                running[(v, s)] = (_launch(v, s, args, out), time.time(), out)
                print(f"[{time.time() - start:5.0f} s] started {v} seed {s}", flush=True)
            time.sleep(1.0)
            for key, (proc, t0, out) in list(running.items()):
                if proc.poll() is not None:
                    del running[key]
                    log = os.path.join(out, "log.txt")
                    if proc.returncode != 0:
                        failed.append(Failure(f"{key[0]} seed {key[1]}", _exit_reason(proc.returncode), log))
                    elif not os.path.isfile(os.path.join(out, "metrics.json")):
                        failed.append(Failure(f"{key[0]} seed {key[1]}", "finished without metrics.json", log))
                    status = "done" if proc.returncode == 0 else f"FAILED ({failed[-1]})"
                    print(f"[{time.time() - start:5.0f} s] {key[0]} seed {key[1]} {status} in "
                          f"{time.time() - t0:.0f} s", flush=True)
    finally:
        _stop(running)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for v in variants:
        for s in seeds:
            path = os.path.join(args.output_dir, f"{v}_s{s}", "metrics.json")
            if os.path.isfile(path):
                with open(path) as f:
                    m = json.load(f)
                m["seed"] = s
                m["train_minutes"] = (m.get("train_seconds") or math.nan) / 60
                results[v].append(m)
    return results, failed


def time_inference(results: dict[str, list[dict]], args, num_images: int = 20) -> list[Failure]:
    """Times inference of each variant's first run alone on the machine (the trainings' own evaluations shared it),
    over the first `num_images` validation images (the first one is the untimed warm-up).

    Adds ``seconds_per_image_alone`` to that run's metrics; returns the evaluations that failed.
    """
    failed = []
    for v, runs in results.items():
        if not runs:
            continue
        run_dir = os.path.join(args.output_dir, f"{v}_s{runs[0]['seed']}")
        out = os.path.join(run_dir, "timing")
        cmd = [sys.executable, "-m", "opmask_fast.evaluate", "--checkpoint", os.path.join(run_dir, "checkpoint.pth"),
               "--output-dir", out, "--max-images", str(num_images), "--no-oracle", "--num-threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        os.makedirs(out, exist_ok=True)
        log = os.path.join(out, "log.txt")
        with open(log, "w") as f:
            code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        if code != 0:
            failed.append(Failure(f"{v} seed {runs[0]['seed']} inference timing", _exit_reason(code), log))
            continue
        with open(os.path.join(out, "metrics.json")) as f:
            runs[0]["seconds_per_image_alone"] = json.load(f)["seconds_per_image"]
    return failed


@errors.entry_point(PROG)
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.output_dir = output_root(args)
    # The options of compare and of the trainings after -- are checked before any dataset or training.
    check_compare(args, train_parser=train_command_line.build_parser())
    # SIGTERM (a job scheduler, `kill`) unwinds as Ctrl-C does, so run_all ends the trainings it started.
    with _on_sigterm(_terminated):
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
    if not folders:
        return [Failure("report", "no run finished")]
    try:
        print(f"report: {report_runs(folders, output_dir)}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the trainings are done; say why the report is missing
        return [Failure("report", f"not written: {e!r}")]
    return []


if __name__ == "__main__":
    main()
