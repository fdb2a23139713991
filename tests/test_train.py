"""Training loop with a small stand-in model: resume, atomic checkpoints, NaN stop, LR schedule, logs."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opmask_fast.data import CocoInstances, ResizeFlip, SyntheticSpec, ensure_synthetic
from opmask_fast.engine.checkpoint import load_checkpoint, save_atomic
from opmask_fast.engine.solver import TrainConfig, build_optimizer, lr_factor
from opmask_fast.engine.trainer import CHECKPOINT_NAME, train


class StandIn(nn.Module):
    """Losses from a conv + BN + dropout over the images and their box counts; NaN on call ``nan_at``."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.5)  # draws from the RNG, so resume must restore it
        self.calls, self.nan_at = 0, nan_at

    def forward(self, images, targets):
        self.calls += 1
        x = torch.stack([F.interpolate(i[None] / 255, size=(16, 16))[0] for i in images])
        feats = F.adaptive_avg_pool2d(self.bn(self.conv(x)).relu(), 1).flatten(1)
        pred = self.head(self.drop(feats)).flatten()
        count = torch.tensor([float(len(t["labels"])) for t in targets])
        loss_a = F.mse_loss(pred, count)
        loss_b = (feats.mean() - 0.5) ** 2
        if self.nan_at is not None and self.calls == self.nan_at:
            loss_b = loss_b * float("nan")
        return {"loss_a": loss_a, "loss_b": loss_b}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=1, num_train=10, num_val=2), str(tmp_path_factory.mktemp("cache")))
    return CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split="circle,triangle,cross",
                         transform=ResizeFlip(short_sides=(48, 64), max_side=64, flip_prob=0.5), filter_empty=True)


def _cfg(**kw):
    base = dict(max_iter=6, batch_size=2, base_lr=0.01, warmup_iters=2, steps=(4,), checkpoint_period=3, log_period=1,
                seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_exactly(dataset, tmp_path):
    torch.manual_seed(0)
    straight = train(StandIn(), dataset, _cfg(), output_dir=str(tmp_path / "a"), show_progress=False)
    torch.manual_seed(0)
    train(StandIn(), dataset, _cfg(max_iter=3), output_dir=str(tmp_path / "b"), show_progress=False)
    assert load_checkpoint(str(tmp_path / "b" / CHECKPOINT_NAME))["iteration"] == 3
    torch.manual_seed(123)  # a different init and RNG: everything must come from the checkpoint
    resumed = train(StandIn(), dataset, _cfg(), output_dir=str(tmp_path / "b"), resume=True, show_progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ckpt = load_checkpoint(str(tmp_path / "b" / CHECKPOINT_NAME))
    assert ckpt["iteration"] == 6 and ckpt["scheduler"]["last_epoch"] == 6
    lines = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
    assert [l["iteration"] for l in lines] == [1, 2, 3, 4, 5, 6]
    assert {"lr", "loss", "loss_a", "loss_b", "seconds_per_iter"} <= set(lines[0])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
    with pytest.raises(FloatingPointError, match="iteration 5 .*loss_b.*last good checkpoint: .*checkpoint.pth"):
        train(StandIn(nan_at=5), dataset, _cfg(), output_dir=str(tmp_path), show_progress=False)
    ckpt = load_checkpoint(str(tmp_path / CHECKPOINT_NAME))
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth")
    save_atomic({"iteration": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"iteration": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_lr_schedule_and_param_groups():
    cfg = TrainConfig(base_lr=0.02, warmup_iters=10, warmup_factor=0.001, steps=(20, 30), gamma=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(5, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(19, cfg) == 1.0
    assert lr_factor(20, cfg) == pytest.approx(0.1) and lr_factor(30, cfg) == pytest.approx(0.01)
    opt = build_optimizer(StandIn(), cfg)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 1e-4] and len(opt.param_groups[1]["params"]) == 2  # BN weight and bias
    with pytest.raises(ValueError, match="increasing"):
        TrainConfig(steps=(30, 20)).validate()


def test_batch_not_divisible_by_processes(dataset, tmp_path):
    from opmask_fast.engine.distributed import DistInfo

    with pytest.raises(ValueError, match="not divisible"):
        train(StandIn(), dataset, _cfg(batch_size=3), output_dir=str(tmp_path), dist_info=DistInfo(world_size=2))
