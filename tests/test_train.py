"""Training loop with a small stand-in model: resume (also with loading workers and aspect-ratio grouping), atomic
checkpoints, NaN stop, LR schedule, logs; the tiny model gets a gradient for every parameter on hard batches."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from opmask_fast.data import CocoInstances, ResizeFlip, SyntheticSpec, ensure_synthetic
from opmask_fast.training.checkpoint import load_checkpoint, save_atomic
from opmask_fast.training.solver import TrainConfig, build_optimizer, lr_factor
from opmask_fast.training.trainer import CHECKPOINT_NAME, train


class StandIn(nn.Module):
    """Losses from a conv + BN + dropout over the images and their box counts; NaN on call ``nan_at``."""

    def __init__(self, nan_at=None, raise_at=None):
        super().__init__()
        self.raise_at = raise_at
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.5)  # draws from the RNG, so resume must restore it
        self.calls, self.nan_at, self.batch_shapes = 0, nan_at, []

    def forward(self, images, targets):
        self.calls += 1
        if self.calls == self.raise_at:  # as the RPN refuses non-finite boxes in training
            raise FloatingPointError("predicted boxes are not finite: training has diverged")
        self.batch_shapes.append([tuple(i.shape[-2:]) for i in images])
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


def test_resume_takes_the_new_schedule_from_its_first_iteration(dataset, tmp_path):
    """--iters, --steps and --warmup may change on resume: every resumed iteration runs at the new schedule's LR (the
    optimizer's saved LR is the old schedule's), as a run with that schedule from the start would."""
    out = str(tmp_path / "r")
    train(StandIn(), dataset, _cfg(max_iter=6, steps=(5,)), output_dir=out, show_progress=False)
    new = _cfg(max_iter=9, steps=(8,), warmup_iters=7)
    train(StandIn(), dataset, new, output_dir=out, resume=True, show_progress=False)
    lrs = {l["iteration"]: l["lr"] for l in map(json.loads, open(os.path.join(out, "metrics.jsonl")))}
    assert lrs[6] == pytest.approx(0.01 * 0.1)  # the old schedule, stepped at 5
    for it in (7, 8, 9):  # logged at iteration it: the LR of step it - 1
        assert lrs[it] == pytest.approx(0.01 * lr_factor(it - 1, new)), it
    assert load_checkpoint(os.path.join(out, CHECKPOINT_NAME))["train_seconds"] > 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
    with pytest.raises(FloatingPointError, match="iteration 5 .*loss_b.*last good checkpoint: .*checkpoint.pth"):
        train(StandIn(nan_at=5), dataset, _cfg(), output_dir=str(tmp_path), show_progress=False)
    ckpt = load_checkpoint(str(tmp_path / CHECKPOINT_NAME))
    assert ckpt["iteration"] == 3
    # The model's own divergence check, inside the forward: the same iteration and checkpoint named.
    with pytest.raises(FloatingPointError, match="diverged at iteration 4; .*last good checkpoint: .*checkpoint.pth"):
        train(StandIn(raise_at=4), dataset, _cfg(), output_dir=str(tmp_path / "r"), show_progress=False)
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
    from opmask_fast.training.distributed import DistInfo

    with pytest.raises(ValueError, match="not divisible"):
        train(StandIn(), dataset, _cfg(batch_size=3), output_dir=str(tmp_path), dist_info=DistInfo(world_size=2))


def _write_coco(root, images):
    """A COCO dataset of noise images with filled rectangles. ``images``: list of (height, width, annotations), each
    annotation (category id, x, y, w, h[, iscrowd])."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    infos, anns = [], []
    for i, (h, w, objects) in enumerate(images):
        pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for cat, x, y, bw, bh, *crowd in objects:
            pixels[y:y + bh, x:x + bw] = (60 * cat, 200, 255 - 60 * cat)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": int(bool(crowd)),
                         "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
        Image.fromarray(pixels).save(os.path.join(root, "img", f"{i}.png"))
        infos.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
    cats = [{"id": 1, "name": "disc"}, {"id": 2, "name": "block"}, {"id": 3, "name": "ghost"}]
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": infos, "annotations": anns, "categories": cats}, f)
    return path, os.path.join(root, "img")


# Landscape and portrait images: none annotated, weak (block) only, crowd + weak, strong (disc) + weak, strong only.
HARD_IMAGES = [
    (64, 80, []), (80, 64, []),
    (64, 80, [(2, 5, 6, 30, 20)]), (80, 64, [(2, 20, 30, 25, 35), (2, 2, 2, 14, 12)]),
    (64, 80, [(1, 30, 10, 40, 40), (2, 4, 40, 20, 18)]), (80, 64, [(1, 10, 10, 40, 50)]),
    (64, 80, [(1, 0, 0, 30, 30, True)]), (80, 64, [(2, 8, 8, 30, 30)]),
]


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    return _write_coco(str(tmp_path_factory.mktemp("hard")), HARD_IMAGES)


def _hard_set(hard_data, filter_empty):
    ann, img = hard_data
    return CocoInstances(ann_file=ann, image_dir=img, split="disc", filter_empty=filter_empty,
                         transform=ResizeFlip(short_sides=(64,), max_side=96, flip_prob=0.5))


def test_resume_is_exact_with_workers_and_aspect_grouping(hard_data, tmp_path):
    ds = _hard_set(hard_data, filter_empty=True)
    assert len(ds) == 5  # the unannotated and the crowd-only images are not trained on
    runs = {}
    for name, workers in (("main", 0), ("workers", 2)):
        torch.manual_seed(0)
        model = StandIn()
        runs[name] = train(model, ds, _cfg(num_workers=workers), output_dir=str(tmp_path / name), show_progress=False)
        # each batch holds one orientation: landscape (w >= h) or portrait
        assert all(len({w >= h for h, w in shapes}) == 1 for shapes in model.batch_shapes)
        assert {w >= h for shapes in model.batch_shapes for h, w in shapes} == {True, False}
    torch.manual_seed(0)
    train(StandIn(), ds, _cfg(max_iter=3, num_workers=2), output_dir=str(tmp_path / "split"), show_progress=False)
    torch.manual_seed(7)
    resumed = train(StandIn(), ds, _cfg(num_workers=2), output_dir=str(tmp_path / "split"), resume=True,
                    show_progress=False)
    losses = {n: [(l["loss_a"], l["loss_b"]) for l in map(json.loads, open(tmp_path / n / "metrics.jsonl"))]
              for n in ("main", "workers", "split")}
    assert len(losses["split"]) == 6 and losses["split"] == losses["workers"] == losses["main"]
    for (k, a), b, c in zip(runs["main"].state_dict().items(), runs["workers"].state_dict().values(),
                            resumed.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k


@pytest.mark.parametrize("variant", ["opmask", "learnable", "baseline"])
def test_every_parameter_gets_a_gradient_on_hard_batches(hard_data, variant):
    from opmask_fast.config import get_preset
    from opmask_fast.modeling import build_model

    ds = _hard_set(hard_data, filter_empty=False)
    cfg = get_preset("baseline_r18_tiny" if variant == "baseline" else "opmask_r18_tiny")
    cfg.num_classes = 3
    if variant == "learnable":
        cfg.prior_scale = "learnable"
    torch.manual_seed(0)
    model = build_model(cfg.validate()).train()
    opt = build_optimizer(model, TrainConfig(base_lr=0.01))
    # no annotations at all; weak classes only; crowd-only + weak; strong + none; a strong-only pair
    for batch in ([0, 1], [2, 3], [6, 7], [4, 0], [5, 4]):
        images, targets = zip(*(ds[(i, 11 * i)] for i in batch))
        losses = model(list(images), list(targets))
        assert all(torch.isfinite(v) for v in losses.values())
        if not any(bool(t["has_mask"].any()) for t in targets):
            assert losses["loss_mask"].item() == 0.0
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"batch {batch}: no gradient for {missing}"
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        opt.step()
        if variant == "learnable":  # not measurable without a foreground RoI, measured on the next batch
            assert bool(model.roi_heads.prior_gain.initialized) == (batch != [0, 1])


def test_cli_rejects_negative_counts(capsys):
    import subprocess
    import sys

    from opmask_fast.train import build_parser

    proc = subprocess.run([sys.executable, "-m", "opmask_fast.train", "--num-workers", "-1"], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    assert proc.returncode == 2
    assert "python -m opmask_fast.train: error: argument --num-workers: expected an integer >= 0, got '-1'" in proc.stderr
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--eval-period", "x"])
    assert exit_info.value.code == 2 and "argument --eval-period: expected an integer >= 0" in capsys.readouterr().err
