"""The solver recipe travels with the model preset; --batch-size scales the LR linearly unless --lr is given."""

import os
import subprocess
import sys

import pytest

from opmask_fast.config import PRESETS
from opmask_fast.training.solver import SOLVER_PRESETS, TrainConfig, get_solver_preset
from opmask_fast.cli.options import train_config_from_args
from opmask_fast.train import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tc(*argv) -> TrainConfig:
    return train_config_from_args(build_parser().parse_args(list(argv)))


def test_every_model_preset_has_a_solver_recipe():
    assert set(SOLVER_PRESETS) == set(PRESETS)
    with pytest.raises(KeyError, match="no solver recipe"):
        get_solver_preset("nope")


@pytest.mark.parametrize("preset", ["opmask_r50_coco", "baseline_r50_coco", "opmask_r101_coco", "baseline_r101_coco"])
def test_coco_presets_train_the_paper_schedule_without_flags(preset):
    tc = _tc("--preset", preset)
    assert (tc.batch_size, tc.base_lr, tc.max_iter, tc.steps, tc.gamma) == (16, 0.02, 130_000, (120_000,), 0.1)
    assert (tc.warmup_iters, tc.warmup_factor, tc.clip_value) == (1000, 0.001, 1.0)
    assert (tc.weight_decay, tc.weight_decay_norm, tc.momentum) == (1e-4, 0.0, 0.9)


def test_tiny_preset_keeps_its_own_schedule():
    tc = _tc("--preset", "opmask_r18_tiny")
    assert (tc.batch_size, tc.base_lr, tc.max_iter, tc.steps, tc.warmup_iters) == (4, 0.02, 800, (666,), 100)
    assert tc.clip_value == 1.0 and tc.checkpoint_period == 500 and tc.log_period == 20


def test_batch_size_scales_the_lr_unless_lr_is_given():
    assert _tc("--preset", "opmask_r50_coco", "--batch-size", "8").base_lr == pytest.approx(0.01)
    assert _tc("--preset", "opmask_r50_coco", "--batch-size", "32").base_lr == pytest.approx(0.04)
    assert _tc("--preset", "opmask_r18_tiny", "--batch-size", "2").base_lr == pytest.approx(0.01)
    assert _tc("--preset", "opmask_r50_coco", "--batch-size", "8", "--lr", "0.05").base_lr == 0.05
    assert _tc("--preset", "opmask_r50_coco", "--lr", "0.01").batch_size == 16


def test_iters_alone_moves_the_step_and_caps_the_warmup():
    tc = _tc("--preset", "opmask_r50_coco", "--iters", "3")
    assert (tc.max_iter, tc.steps, tc.warmup_iters) == (3, (2,), 1)
    tc = _tc("--preset", "opmask_r18_tiny", "--iters", "600")
    assert (tc.steps, tc.warmup_iters) == ((500,), 60)
    assert _tc("--iters", "1").steps == (1,)  # not (0,): a 1-iteration run at the full LR, not at 0.1 of it
    tc = _tc("--preset", "opmask_r50_coco", "--iters", "90000", "--steps", "60000,80000", "--warmup", "500",
             "--clip", "0")
    assert (tc.steps, tc.warmup_iters, tc.clip_value) == ((60000, 80000), 500, None)


def test_help_documents_the_scaling_rule():
    out = subprocess.run([sys.executable, "-m", "opmask_fast.train", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120).stdout
    assert "preset LR x batch size / preset batch size" in " ".join(out.split())
