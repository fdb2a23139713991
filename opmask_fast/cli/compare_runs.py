"""Runs compare's trainings: one training process per variant and seed, a few at a time, each in its own folder.

A finished run is reused (``--reuse``) only if it was trained by the same command, settings-wise; SIGTERM ends the
running trainings as Ctrl-C does; a training that fails is reported, not raised, so the table shows the others.
``time_inference`` times each variant's first run alone on the machine after the trainings.
"""

from __future__ import annotations

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

from ..variants import VARIANTS


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
def on_sigterm(handler) -> Iterator[None]:
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


def terminated(signum, frame):
    raise SystemExit(128 + signum)


def _stop(running: dict) -> None:
    """Ends the trainings still running (compare itself was interrupted or killed): none outlives it."""
    if not running:
        return
    with on_sigterm(signal.SIG_IGN):  # a second SIGTERM must not stop the stopping
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
                    failure = None
                    if proc.returncode != 0:
                        failure = Failure(f"{key[0]} seed {key[1]}", _exit_reason(proc.returncode), log)
                    elif not os.path.isfile(os.path.join(out, "metrics.json")):
                        failure = Failure(f"{key[0]} seed {key[1]}", "finished without metrics.json", log)
                    if failure is not None:
                        failed.append(failure)
                    status = "done" if failure is None else f"FAILED ({failure})"
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
