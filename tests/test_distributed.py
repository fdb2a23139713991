"""torchrun with 2 CPU processes (gloo): DDP training with evaluation during training, and distributed evaluation
giving the same metrics and predictions as one process; each process its own random stream."""

import json
import os
import sys

import pytest

from _torchrun import run_torchrun as _run  # also for the one-process evaluate
from opmask_fast.data import SyntheticSpec, ensure_synthetic
from opmask_fast.training.checkpoint import load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Timings differ between runs; everything else must be identical.
TIMINGS = {"seconds_per_image", "eval_seconds", "train_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=4), str(tmp_path_factory.mktemp("cache")))
    # One strong class: most per-process batches of one image hold no mask-supervised instance.
    return ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"], "--val-ann", paths["val_ann"],
            "--val-images", paths["val_images"], "--split", "circle"]


def test_ddp_training_with_periodic_and_distributed_evaluation(data, tmp_path):
    out = str(tmp_path / "ddp")
    _run([*TORCHRUN, "-m", "opmask_fast.train", *data, "--iters", "3", "--batch-size", "2", "--log-period", "1",
          "--eval-period", "2", "--eval-max-images", "3", "--num-threads", "1", "--quiet", "--output-dir", out])
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["iteration"] for l in lines if "loss" in l] == [1, 2, 3]
    evals = [l for l in lines if "eval" in l]
    assert [l["iteration"] for l in evals] == [2, 3]  # every 2 iterations, and the final model
    assert all({"mask_AP_weak", "prior_AP_strong", "oracle_mIoU_weak"} <= set(l["eval"]) for l in evals)
    assert evals[1]["eval"]["num_images"] == 3
    in_training = json.load(open(os.path.join(out, "metrics.json")))
    assert in_training["num_images"] == 3 and load_checkpoint(os.path.join(out, "checkpoint.pth"))["iteration"] == 3

    ckpt = os.path.join(out, "checkpoint.pth")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ev = ["-m", "opmask_fast.evaluate", "--checkpoint", ckpt, "--max-images", "3", "--num-threads", "1"]
    _run([sys.executable, *ev, "--output-dir", one])
    _run([*TORCHRUN, *ev, "--output-dir", two])
    m1, m2 = (json.load(open(os.path.join(d, "metrics.json"))) for d in (one, two))
    assert m1["num_detections"] > 0 and m1["oracle_mIoU_strong"] is not None and m1["prior_AP"] is not None
    # timings differ, and the training run also reports its validation data's drops under val_data_dropped
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMINGS and k != "val_data_dropped"}  # noqa: E731
    assert strip(m1) == strip(m2)
    assert strip(m1) == strip(in_training)
    for name in ("predictions.json", "prior_predictions.json"):
        assert json.load(open(os.path.join(one, name))) == json.load(open(os.path.join(two, name)))


def test_cleanup_fails_when_the_default_group_outlives_it():
    """A function default holding `group.WORLD` (what a torch module imported after `init_process_group` leaves behind)
    keeps the default group and its gloo threads alive past `destroy_process_group`; `cleanup` must say so, and must
    pass once nothing holds it. Without the check such a run aborts at exit about once in a hundred."""
    import torch.distributed as dist

    from opmask_fast.training.distributed import cleanup

    def init():
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())

    init()
    cleanup()
    assert not dist.is_initialized()
    init()

    def late_module_function(group=dist.group.WORLD):  # evaluated now, while the group exists
        return group

    with pytest.raises(RuntimeError, match="still referenced 1 time"):
        cleanup()
    assert not dist.is_initialized()
    assert late_module_function() is not None


def test_a_failing_command_reports_its_own_error_and_frees_the_group(monkeypatch):
    """An error inside a distributed command (an unreadable image, Ctrl-C) is the error reported, not cleanup's
    reference check tripping over the failed frames that still hold the group (the model, the group itself)."""
    import argparse

    import torch.distributed as dist

    from opmask_fast.training import distributed

    def init(device):
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        return distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=device)

    monkeypatch.setattr(distributed, "init_distributed", init)
    real_cleanup = distributed.cleanup
    # Strict: the group must really be freed, not only its check skipped.
    monkeypatch.setattr(distributed, "cleanup", lambda check=True: real_cleanup(check=True))

    def inner():
        group = dist.group.WORLD  # a local of a failing frame, as a DDP model's reference is
        raise FloatingPointError(f"diverged ({group is not None})")

    def body(args, info, plan):
        try:
            inner()
        except FloatingPointError as e:  # a wrapped error: the inner frame stays reachable through its cause
            raise ValueError("cannot read image x.png") from e

    args = argparse.Namespace(num_threads=None, device="cpu")
    with pytest.raises(ValueError, match="cannot read image x.png"):
        distributed.run_in_process_group(body, args, None)
    assert not dist.is_initialized()


PROBE = '''
import json, sys
import torch
from torch import nn
from opmask_fast.data import CocoInstances, ResizeFlip
from opmask_fast.training.distributed import cleanup, init_distributed
from opmask_fast.training.solver import TrainConfig
from opmask_fast.training.trainer import train

class Dropped(nn.Module):
    """A loss through dropout: records the mask its first call draws."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(64))
        self.masks = []
    def forward(self, images, targets):
        kept = nn.functional.dropout(torch.ones(64), 0.5, training=True) != 0
        self.masks.append(kept.tolist())
        return {"loss": (self.w * kept).sum() * 0}

ann, images, out = sys.argv[1:]
info = init_distributed("cpu")
torch.manual_seed(7)  # as the command: one seed for the weights on every process
model = Dropped()
data = CocoInstances(ann_file=ann, image_dir=images, split="circle",
                     transform=ResizeFlip(short_sides=(32,), max_side=32))
train(model, data, TrainConfig(max_iter=2, batch_size=2, seed=7, warmup_iters=0, steps=()), output_dir=out,
      dist_info=info, show_progress=False)
json.dump(model.masks, open(f"{out}/masks{info.rank}.json", "w"))
cleanup()
'''


def test_each_process_draws_its_own_random_stream(tmp_path):
    """Under DDP each process seeds torch with seed + rank after the model is built (as detectron2): the two processes'
    dropout masks (as their RoI samples) differ, and each is the one that seed gives."""
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=4, num_val=1), str(tmp_path / "cache"))
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    _run([*TORCHRUN, str(probe), paths["train_ann"], paths["train_images"], str(tmp_path)])
    masks = [json.load(open(tmp_path / f"masks{r}.json")) for r in (0, 1)]
    assert len(masks[0]) == len(masks[1]) == 2
    assert masks[0][0] != masks[1][0]
    import torch

    for rank in (0, 1):
        torch.manual_seed(7 + rank)
        assert (torch.nn.functional.dropout(torch.ones(64), 0.5, training=True) != 0).tolist() == masks[rank][0]
