"""Runs the two-process CPU training of the tests (torchrun, gloo) many times under CPU load, with core dumps on, and
prints the native backtrace of every thread of any rank that dies.

    python scripts/torchrun_stress.py --runs 100 --load 2 --out stress/

Each run does what tests/test_distributed.py does, in its own folder under --out: a two-process training of the
tiny synthetic set with evaluation during training, then a two-process evaluation of its checkpoint; with Python's faulthandler on (Python stacks of every thread on a fatal signal) and `ulimit -c unlimited`; a
rank that aborts leaves a core file there, which gdb reads (`thread apply all bt`). --load N keeps N busy processes
running beside it. The summary counts exit codes; the exit code is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x = (x * 31 + i) % 1_000_003


def _core_backtraces(folder: str) -> str:
    out = []
    for core in sorted(glob.glob(os.path.join(folder, "core*"))):
        bt = subprocess.run(["gdb", "-batch", "-ex", "info threads", "-ex", "thread apply all bt 30", sys.executable,
                             core], capture_output=True, text=True, timeout=600)
        out.append(f"--- {core}\n{bt.stdout[-20000:]}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--load", type=int, default=2, help="busy processes beside the runs")
    p.add_argument("--out", default="outputs/torchrun_stress")
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    from opmask_fast.data import SyntheticSpec, ensure_synthetic

    os.makedirs(args.out, exist_ok=True)
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=4), os.path.join(args.out, "cache"))
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    codes: dict[int, int] = {}
    failed = []
    try:
        for run in range(args.runs):
            folder = os.path.abspath(os.path.join(args.out, f"run{run:03d}"))
            os.makedirs(folder, exist_ok=True)
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            train = [*torchrun, "-m", "opmask_fast.train", "--train-ann", paths["train_ann"], "--train-images",
                     paths["train_images"], "--val-ann", paths["val_ann"], "--val-images", paths["val_images"],
                     "--split", "circle", "--iters", str(args.iters), "--batch-size", "2", "--log-period", "1",
                     "--eval-period", "2", "--eval-max-images", "3", "--quiet", "--num-threads", "1",
                     "--output-dir", os.path.join(folder, "train")]
            evaluate = [*torchrun, "-m", "opmask_fast.evaluate", "--checkpoint",
                        os.path.join(folder, "train", "checkpoint.pth"), "--max-images", "3", "--num-threads", "1",
                        "--output-dir", os.path.join(folder, "evaluate")]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", PYTHONPATH=ROOT)
            start = time.time()
            for cmd in (train, evaluate):
                proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    break
            codes[proc.returncode] = codes.get(proc.returncode, 0) + 1
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode} in {cmd[cmd.index('-m', 2) + 1]})"
            print(f"run {run}: {status} in {time.time() - start:.1f} s", flush=True)
            if proc.returncode != 0:
                failed.append(run)
                with open(os.path.join(folder, "log.txt"), "w") as f:
                    f.write(proc.stdout + "\n" + proc.stderr + "\n" + _core_backtraces(folder))
                print(f"  log and backtraces: {os.path.join(folder, 'log.txt')}", flush=True)
            else:
                subprocess.run(["rm", "-rf", folder])
    finally:
        stop.set()
        for b in burners:
            b.join(timeout=5)
    print(f"{args.runs} runs under {args.load} busy processes: exit codes {codes}; failed runs {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
