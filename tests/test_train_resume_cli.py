"""What `train` does with the folder of an earlier run: --resume refuses options the checkpoint's state would
silently override, and a model-only file; a new run clears the earlier run's results; --variant gets its own
default folder."""

import json
import os

import pytest
import torch

from _cli import in_process
from opmask_fast.data import SyntheticSpec, ensure_synthetic

FAST = ["--iters", "2", "--batch-size", "2", "--quiet", "--num-threads", "1", "--eval-max-images", "1",
        "--split", "circle,triangle,cross"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=3), str(tmp_path_factory.mktemp("cache")))
    return ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"], "--val-ann",
            paths["val_ann"], "--val-images", paths["val_images"]]


def test_resume_refuses_what_the_checkpoint_keeps_and_a_new_run_clears_old_results(data, tmp_path, capsys):
    from opmask_fast import train

    out = tmp_path / "run"
    train.main([*data, *FAST, "--output-dir", str(out)])
    assert (out / "metrics.json").is_file() and (out / "predictions.json").is_file()
    for extra, fragment in ((["--lr", "0.5"], "base_lr=0.5"), (["--seed", "3"], "seed=0 (now seed=3)"),
                            (["--batch-size", "4"], "batch_size=2")):
        line = in_process(capsys, "train", *data, *FAST, *extra, "--resume", "--output-dir", out)  # the later wins
        assert "--resume: " in line and "which a resumed run keeps from its checkpoint" in line, line
        assert fragment in line, line
    # Resumed past its --iters the run trains no further: its evaluation is labelled with the checkpoint's iteration.
    train.main([*data, *FAST, "--iters", "1", "--resume", "--output-dir", str(out)])
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if '"eval"' in line]
    assert [e["iteration"] for e in evals] == [2]  # the evaluation of the same model again replaces the first one
    assert [json.loads(line)["iteration"] for line in open(out / "metrics.jsonl") if '"loss"' in line] == [2]
    # Resumed to train on without evaluation: the results of the iteration-2 model are gone; the training time adds up.
    first = json.load(open(out / "metrics.json"))["train_seconds"]
    assert first == pytest.approx(torch.load(out / "checkpoint.pth", weights_only=False)["train_seconds"], abs=1.0)
    train.main([*data, *FAST, "--iters", "3", "--steps", "3", "--no-eval", "--resume", "--output-dir", str(out)])
    assert not (out / "metrics.json").exists() and not (out / "predictions.json").exists()
    train.main([*data, *FAST, "--iters", "3", "--steps", "3", "--resume", "--output-dir", str(out)])
    assert json.load(open(out / "metrics.json"))["train_seconds"] > first
    state = torch.load(out / "checkpoint.pth", weights_only=False)
    torch.save({"model": state["model"], "meta": state["meta"]}, tmp_path / "model_only.pth")
    os.makedirs(tmp_path / "m")
    os.replace(tmp_path / "model_only.pth", tmp_path / "m" / "checkpoint.pth")
    line = in_process(capsys, "train", *data, *FAST, "--resume", "--output-dir", tmp_path / "m")
    assert "holds no training state to continue (no optimizer, scheduler, iteration)" in line, line
    os.makedirs(tmp_path / "d" / "checkpoint.pth")
    line = in_process(capsys, "train", *data, *FAST, "--output-dir", tmp_path / "d")
    assert "its checkpoint.pth is a folder" in line, line
    # A new run (no --resume) without evaluation: the earlier run's metrics and predictions are gone.
    train.main([*data, *FAST, "--no-eval", "--seed", "1", "--output-dir", str(out)])
    assert not (out / "metrics.json").exists() and not (out / "predictions.json").exists()
    assert torch.load(out / "checkpoint.pth", weights_only=False)["meta"]["train_config"]["seed"] == 1


def test_variant_runs_get_their_own_default_folder(tmp_path, monkeypatch):
    from opmask_fast.cli import preflight
    from opmask_fast.cli.train import build_parser

    monkeypatch.chdir(tmp_path)
    folders = {}
    for extra in ([], ["--no-prior"], ["--variant", "baseline"], ["--dataset", "shapes2"]):
        args = build_parser().parse_args(["--cache-dir", str(tmp_path / "cache"), *extra])
        folders[" ".join(extra)] = os.path.relpath(preflight.check_train(args).output_dir, tmp_path)
    assert folders == {"": os.path.join("outputs", "opmask_r18_lite"),
                       "--no-prior": os.path.join("outputs", "opmask_r18_lite_noprior"),
                       "--variant baseline": os.path.join("outputs", "opmask_r18_lite_baseline"),
                       "--dataset shapes2": os.path.join("outputs", "opmask_r18_lite_shapes2")}
