"""The training entry point with the real model: 2-process torchrun on the CPU, tiny_coco, evaluate/predict, errors
(more careless input in test_cli_errors.py)."""

import json
import os
import sys

import pytest

from _torchrun import run_torchrun
from opmask_fast.data import SyntheticSpec, ensure_synthetic
from opmask_fast.training.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_COCO = os.path.join(ROOT, "..", "shared", "data", "tiny_coco")
FAST = ["--iters", "2", "--batch-size", "2", "--log-period", "1", "--quiet"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=3), str(tmp_path_factory.mktemp("cache")))
    return ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"], "--val-ann", paths["val_ann"],
            "--val-images", paths["val_images"], "--split", "circle,triangle,cross"]


def _train(args):
    from opmask_fast import train as train_cli

    return train_cli.main(args)


def test_torchrun_two_cpu_processes(small_data, tmp_path):
    out = str(tmp_path / "ddp")
    run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "opmask_fast.train", *small_data, *FAST, "--num-threads", "1", "--no-eval", "--output-dir", out])
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert ckpt["iteration"] == 2 and len(ckpt["rng"]) == 2  # one RNG state per process
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped, loadable without DDP
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["iteration"] for l in lines] == [1, 2]  # written once, by rank 0


def test_train_evaluate_predict_on_synthetic(small_data, tmp_path, capsys, caplog):
    from opmask_fast import evaluate, predict

    out = str(tmp_path / "run")
    metrics = _train([*small_data, *FAST, "--output-dir", out, "--visualize", "1"])
    assert "mask AP weak" in capsys.readouterr().out
    on_disk = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("mask_AP_weak", "mask_AP_strong", "mask_AP_ambiguous", "prior_AP_weak", "oracle_mIoU_weak",
                "seconds_per_image", "train_seconds"):
        assert key in on_disk and key in metrics
    assert on_disk["weak_categories"] == ["ring", "square", "star"] and on_disk["num_images"] == 3
    assert isinstance(json.load(open(os.path.join(out, "predictions.json"))), list)
    assert os.listdir(os.path.join(out, "vis"))
    # resuming a finished run does no more iterations
    with caplog.at_level("INFO"):
        _train([*small_data, *FAST, "--output-dir", out, "--resume", "--no-eval"])
    assert "resumed from" in caplog.text
    ev = evaluate.main(["--checkpoint", os.path.join(out, "checkpoint.pth"), "--output-dir", str(tmp_path / "ev"),
                        "--max-images", "2", "--no-oracle"])
    assert ev["num_images"] == 2 and json.load(open(tmp_path / "ev" / "metrics.json"))["num_images"] == 2
    # test-time changes of the checkpoint's config; changes its weights do not fit end as usage errors
    sets = ["--set", "rpn.post_nms_topk_test=1", "--set", "roi_heads.detections_per_image=1"]
    ev = evaluate.main(["--checkpoint", os.path.join(out, "checkpoint.pth"), "--output-dir", str(tmp_path / "ev1"),
                        "--max-images", "2", "--no-oracle", *sets])
    assert ev["num_detections"] <= 2 and ev["config_overrides"] == sets[1::2]
    capsys.readouterr()
    for item, message in (("roi_heads.mask_head_conv_dim=8", "weights do not fit"),
                          ("rpn.post_nms_topk_test=0", "rpn.post_nms_topk_test must be >= 1"),
                          ("rpn.no_such_field=1", "unknown config field")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--checkpoint", os.path.join(out, "checkpoint.pth"), "--output-dir",
                           str(tmp_path / "ev2"), "--set", item])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith("python -m opmask_fast.evaluate: error: --set") \
            and message in err[-1], err
    assert not os.path.exists(tmp_path / "ev2" / "metrics.json")
    images = small_data[small_data.index("--val-images") + 1]
    predict.main(["--checkpoint", os.path.join(out, "checkpoint.pth"), "--images", images, "--output-dir",
                  str(tmp_path / "pred"), "--visualize"])
    preds = json.load(open(tmp_path / "pred" / "predictions.json"))
    assert all({"image_id", "category_id", "bbox", "score", "segmentation", "file_name"} <= set(p) for p in preds)
    assert len(json.load(open(tmp_path / "pred" / "images.json"))) == 3


@pytest.mark.skipif(not os.path.isdir(TINY_COCO), reason="../shared/data/tiny_coco is absent")
def test_tiny_coco_voc_split_trains_and_evaluates(tmp_path):
    t = os.path.join(TINY_COCO, "annotations")
    out = str(tmp_path / "tiny")
    metrics = _train(["--train-ann", os.path.join(t, "instances_train2017.json"), "--train-images",
                      os.path.join(TINY_COCO, "train2017"), "--val-ann", os.path.join(t, "instances_val2017.json"),
                      "--val-images", os.path.join(TINY_COCO, "val2017"), "--split", "voc", *FAST,
                      "--eval-max-images", "3", "--output-dir", out])
    assert metrics["num_images"] == 3 and len(metrics["strong_categories"]) == 20
    assert len(metrics["weak_categories"]) == 60
    assert json.load(open(os.path.join(out, "metrics.json")))["num_images"] == 3


def _usage_error(capsys, args) -> str:
    """A usage error ends ``main`` as at the command line: SystemExit(2) and one line on stderr."""
    with pytest.raises(SystemExit) as e:
        _train(args)
    lines = [l for l in capsys.readouterr().err.splitlines() if ": error:" in l]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("python -m opmask_fast.train: error: ")
    return lines[0]


def test_clear_errors(small_data, tmp_path, capsys):
    bad_split = list(small_data)
    bad_split[bad_split.index("--split") + 1] = "circle,hexagon"
    assert "unknown categories in split: ['hexagon']" in _usage_error(
        capsys, [*bad_split, *FAST, "--output-dir", str(tmp_path / "x")])
    missing = list(small_data)
    missing[missing.index("--train-ann") + 1] = str(tmp_path / "missing.json")
    assert "--train-ann " + str(tmp_path / "missing.json") + " not found" in _usage_error(
        capsys, [*missing, *FAST, "--output-dir", str(tmp_path / "x")])
    assert "missing: --train-images" in _usage_error(capsys, [*small_data[:2], *FAST, "--output-dir",
                                                              str(tmp_path / "x")])
    assert "unknown config field" in _usage_error(
        capsys, [*small_data, *FAST, "--set", "roi_heads.nope=1", "--output-dir", str(tmp_path / "x")])


def test_data_paths_given_relative_are_kept_absolute(tmp_path, monkeypatch):
    # The checkpoint's meta keeps them: evaluate --checkpoint run from another folder must find the data.
    import argparse

    from opmask_fast.cli.options import resolve_data

    monkeypatch.chdir(tmp_path)
    names = dict(train_ann="a/train.json", train_images="a/train", val_ann="a/val.json", val_images="a/val")
    paths = resolve_data(argparse.Namespace(**names, dataset=None, data_images=None))
    assert {k: paths[k] for k in names} == {k: str(tmp_path / v) for k, v in names.items()}
