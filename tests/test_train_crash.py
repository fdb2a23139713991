"""Crash safety of training: a run killed with SIGKILL at any moment (during a step, during a checkpoint write) and
continued with --resume ends with exactly the weights of an uninterrupted run, its checkpoint is never half-written,
and its metrics log holds each iteration once.

Fails if the checkpoint were written in place (a kill mid-write leaves a file torch.load rejects), if a resumed run
did not restore the data stream, RNG or LR schedule (other weights), or if a resumed run kept the killed run's log
lines past its checkpoint (iterations twice in metrics.jsonl).
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from opmask_fast.data import SyntheticSpec, ensure_synthetic
from opmask_fast.training.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=3, num_train=8, num_val=2), str(tmp_path_factory.mktemp("cache")))
    return ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"], "--val-ann", paths["val_ann"],
            "--val-images", paths["val_images"], "--split", "circle,triangle,cross"]


def _command(data, out):
    return [sys.executable, "-m", "opmask_fast.train", *data, "--iters", str(ITERS), "--batch-size", "2",
            "--checkpoint-period", "1", "--log-period", "1", "--no-eval", "--quiet", "--num-threads", "1",
            "--output-dir", out, "--resume"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def _logged_iteration(out: str) -> int:
    """The last iteration in the run's metrics.jsonl (0 before the first; a line still being written is skipped)."""
    last = 0
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                try:
                    last = max(last, json.loads(line)["iteration"])
                except (ValueError, KeyError):
                    pass
    except FileNotFoundError:
        pass
    return last


def test_killed_training_resumes_to_the_same_weights(data, tmp_path):
    reference = str(tmp_path / "reference")
    start = time.time()
    subprocess.run(_command(data, reference), env=_env(), check=True, capture_output=True, timeout=600)
    step = (time.time() - start) / ITERS

    out = str(tmp_path / "killed")
    # Kill moments follow the run's own progress, not the clock of another run (machines and loads differ): after a
    # random logged iteration, at once for the first kill (the run has iterations left, so the kill lands), then up to
    # a step and a half later (inside a step, a checkpoint write or the start-up of the next attempt).
    rng = random.Random(0)
    kills = 0
    for attempt in range(12):
        done = _logged_iteration(out)
        proc = subprocess.Popen(_command(data, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 4 and done < ITERS - 1:
            target = rng.randint(max(done, 1), ITERS - 2) if kills == 0 else rng.randint(done, ITERS - 2)
            while proc.poll() is None and _logged_iteration(out) < target:
                time.sleep(0.02)
            deadline = time.time() + (0.0 if kills == 0 else rng.uniform(0.0, 1.5) * step)
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        code = proc.wait(timeout=600)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        ckpt = os.path.join(out, "checkpoint.pth")
        if os.path.exists(ckpt):
            state = load_checkpoint(ckpt)  # whole, whenever the kill came
            assert 1 <= state["iteration"] <= ITERS
        if code == 0:
            break
        assert code == -signal.SIGKILL, stderr[-3000:]
    else:
        pytest.fail("the killed training never finished")

    assert kills >= 1
    ref, got = load_checkpoint(os.path.join(reference, "checkpoint.pth")), load_checkpoint(ckpt)
    assert got["iteration"] == ITERS
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    assert not glob.glob(os.path.join(out, ".checkpoint.pth.tmp-*"))  # no temporary file left behind
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["iteration"] for l in lines] == list(range(1, ITERS + 1))
    ref_lines = [json.loads(l) for l in open(os.path.join(reference, "metrics.jsonl"))]
    assert [l["loss"] for l in lines] == [l["loss"] for l in ref_lines]
