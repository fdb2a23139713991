"""Careless input at the real command line: one error line and exit code 2 before any work, --debug for a traceback,
unusable annotations counted instead of trained on, unreadable images skipped by predict with exit code 3."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import in_process, run, usage_error
from opmask_fast.data import SyntheticSpec, ensure_synthetic

FAST = ["--iters", "2", "--batch-size", "2", "--quiet", "--num-threads", "1"]
SPLIT = ["--split", "circle,triangle,cross"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=3), str(tmp_path_factory.mktemp("cache")))
    return paths


def _args(paths, **override):
    p = {**paths, **override}
    return ["--train-ann", p["train_ann"], "--train-images", p["train_images"], "--val-ann", p["val_ann"],
            "--val-images", p["val_images"]]


def _edited(paths, tmp_path, edit) -> str:
    """A copy of the training annotations changed by ``edit(data)``."""
    d = json.load(open(paths["train_ann"]))
    edit(d)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(d))
    return str(out)


def _strong(d):
    return [a for a in d["annotations"] if a["category_id"] in (1, 2, 3)]  # circle, triangle, cross


TRAIN_CASES = {
    "no split on a non-COCO dataset": ([], ["--split is required", "not COCO's",
                                           "circle, triangle, cross, ring, square, star"]),
    "empty split": (["--split", ""], ["--split is empty"]),
    "split without strong classes": (["--split", "none"], ["leaves no strong (mask-supervised) class"]),
    "split without weak classes": (["--split", "circle,triangle,cross,ring,square,star"],
                                   ["leaves no weak (box-only) class", "--split all"]),
    "voc split on a non-COCO dataset": (["--split", "voc"], ["the VOC splits need COCO's categories", "circle"]),
    "split with an open quote": (["--split", '"circle,triangle'], ["--split: split '\"circle,triangle'",
                                                                    "double quote is not closed"]),
    "weights not a checkpoint": (SPLIT + ["--weights", __file__], ["--weights", "is not a checkpoint"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_split_and_file_errors(data, tmp_path, case):
    extra, fragments = TRAIN_CASES[case]
    proc = run("train", *_args(data), *FAST, *extra, "--output-dir", tmp_path / "out")
    usage_error(proc, "train", *fragments)
    assert not os.path.exists(tmp_path / "out" / "checkpoint.pth")


def test_missing_val_ann_is_found_before_training(data, tmp_path):
    proc = run("train", *_args(data, val_ann=str(tmp_path / "val.json")), *SPLIT, *FAST, "--output-dir",
               tmp_path / "out")
    usage_error(proc, "train", "--val-ann", "val.json not found")
    assert "trained in" not in proc.stderr and not os.path.exists(tmp_path / "out" / "checkpoint.pth")


@pytest.mark.parametrize("extra, fragments", [
    (["--split", "circle,hexagon"], ["unknown categories in split: ['hexagon']"]),
    (["--set", "roi_heads.nope=1"], ["unknown config field 'roi_heads.nope'"]),
    (["--set", "rpn.nms_thresh=high"], ["rpn.nms_thresh=high", "float"]),
    (["--set", "num_classes=3"], ["num_classes=3", "has 6 categories"]),
    (["--iters", "0"], ["--iters must be >= 1"]),
    (["--iters", "abc"], ["argument --iters: invalid int value: 'abc'"]),  # argparse's own errors: one line too
    (["--steps", "10,x"], ["--steps must be"]),
    (["--prior-scale", "nan"], ["--prior-scale"]),
    (["--device", "cuda:99"], ["--device cuda:99"]),
])
def test_train_option_errors(data, tmp_path, capsys, extra, fragments):
    line = in_process(capsys, "train", *_args(data), *SPLIT, *FAST, *extra, "--output-dir", tmp_path / "out")
    assert all(f in line for f in fragments), line
    assert not os.path.exists(tmp_path / "out" / "checkpoint.pth")


@pytest.mark.parametrize("case", ["missing train images", "no train-images option", "output dir is a file"])
def test_train_path_errors(data, tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "missing train images":
        args, fragments = _args(data, train_images=str(tmp_path / "imgs")), ["--train-images", "imgs not found"]
    elif case == "no train-images option":
        args, fragments = ["--train-ann", data["train_ann"]], ["missing: --train-images"]
    else:
        out.write_text("")
        args, fragments = _args(data), ["--output-dir", "is a file"]
    line = in_process(capsys, "train", *args, *SPLIT, *FAST, "--output-dir", out)
    assert all(f in line for f in fragments), line


def _nan_boxes(d):
    for a in d["annotations"]:
        a["bbox"] = [float("nan")] * 4


def _no_strong_masks(d):
    for a in _strong(d):
        a["segmentation"] = []


def _unknown_category(d):
    d["annotations"][2]["category_id"] = 99


def _bad_rle(d):
    _strong(d)[0]["segmentation"] = {"size": [128, 128], "counts": [100, 5]}  # pycocotools would read past it


def _no_weak_boxes(d):
    d["annotations"] = _strong(d)  # ring, square and star listed, never annotated


@pytest.mark.parametrize("edit, fragments", [
    (_nan_boxes, ["has no image with a usable annotation", "bbox_nonfinite"]),
    (_no_strong_masks, ["no annotation of the strong classes", "usable mask", "mask_empty"]),
    (_no_weak_boxes, ["--split 'circle,triangle,cross': no weak (box-only) class has a usable annotation",
                      "(ring, square, star; dropped: none)", "--split all"]),
])
def test_train_annotation_errors(data, tmp_path, edit, fragments):
    ann = _edited(data, tmp_path, edit)
    proc = run("train", *_args(data, train_ann=ann), *SPLIT, *FAST, "--output-dir", tmp_path / "out")
    usage_error(proc, "train", "edited.json", *fragments)


def test_train_annotation_and_image_errors_in_process(data, tmp_path, capsys):
    ann = _edited(data, tmp_path, _unknown_category)
    line = in_process(capsys, "train", *_args(data, train_ann=ann), *SPLIT, *FAST, "--output-dir", tmp_path / "o")
    assert "edited.json: annotation 3 has category_id 99" in line
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in os.listdir(data["train_images"]):
        Image.open(os.path.join(data["train_images"], f)).save(folder / f)
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(folder / "000003.png")
    line = in_process(capsys, "train", *_args(data, train_images=str(folder)), *SPLIT, *FAST, "--output-dir",
                      tmp_path / "o")
    assert "000003.png is 60x50" in line and "says 128x128 (image 4)" in line
    raw = open(os.path.join(data["train_images"], "000003.png"), "rb").read()
    for broken in (b"not a png", raw[: len(raw) // 2]):  # unreadable, truncated (its header is fine)
        (folder / "000003.png").write_bytes(broken)
        line = in_process(capsys, "train", *_args(data, train_images=str(folder)), *SPLIT, *FAST, "--output-dir",
                          tmp_path / "o")
        assert "cannot read image" in line and "000003.png (image 4" in line


def test_debug_shows_the_traceback(data, tmp_path):
    for proc in (run("train", *_args(data), *FAST, "--output-dir", tmp_path, "--debug"),
                 run("train", *_args(data), *FAST, "--output-dir", tmp_path, env={"OPMASK_FAST_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr
        assert "UsageError: --split is required" in proc.stderr
    missing = tmp_path / "no_run"
    for proc in (run("analyze", missing, "--debug"), run("analyze", missing, env={"OPMASK_FAST_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr
        assert f"UsageError: no metrics.json at {missing}" in proc.stderr
    usage_error(run("analyze", missing), "analyze", f"no metrics.json at {missing}")


@pytest.fixture(scope="module")
def bad_run(data, tmp_path_factory):
    """A short training on annotations with a NaN coordinate, an empty strong segmentation, a box far outside the
    image and an RLE whose counts do not fill the image."""
    tmp = tmp_path_factory.mktemp("bad")

    def edit(d):
        strong = _strong(d)
        strong[0]["bbox"][1] = float("nan")
        strong[1]["segmentation"] = []
        strong[2]["bbox"] = [1000.0, 5.0, 10.0, 10.0]
        _bad_rle({"annotations": strong[3:4]})
        d["ids"] = [s["id"] for s in strong[:4]]

    ann = _edited(data, tmp, edit)
    out = tmp / "run"
    proc = run("train", *_args(data, train_ann=ann), *SPLIT, *FAST, "--eval-max-images", "1", "--output-dir", out)
    return proc, out, json.load(open(ann))["ids"]


def test_unusable_annotations_are_counted_not_trained_on(bad_run):
    proc, out, (nan_id, empty_id, outside_id, rle_id) = bad_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["data_dropped"] == {"bbox_nonfinite": 1, "bbox_outside_image": 1, "mask_empty": 1,
                                       "mask_invalid": 1}
    assert f"mask_invalid 1 (ids {rle_id})" in proc.stderr
    assert f"bbox_nonfinite 1 (ids {nan_id})" in proc.stderr and f"mask_empty 1 (ids {empty_id})" in proc.stderr
    assert f"bbox_outside_image 1 (ids {outside_id})" in proc.stderr
    assert metrics["val_data_dropped"] == {}


@pytest.mark.parametrize("command, kind", [("evaluate", "text"), ("predict", "random bytes"),
                                           ("predict", "state dict without our keys")])
def test_not_a_checkpoint(data, tmp_path, command, kind):
    path = tmp_path / "c.pth"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"conv.weight": torch.zeros(2)}, path)
    proc = run(command, "--checkpoint", path, *(["--images", data["val_images"], "--output-dir", tmp_path / "o"]
                                                if command == "predict" else []))
    line = usage_error(proc, command, str(path))
    assert ("no 'model' and 'meta' entries" in line) if kind.startswith("state") else ("is not a checkpoint" in line)
    assert "weights_only" not in line


def test_evaluate_data_errors(bad_run, data, tmp_path, capsys):
    ckpt = bad_run[1] / "checkpoint.pth"
    line = in_process(capsys, "evaluate", "--checkpoint", ckpt, "--val-ann", data["val_ann"])
    assert "give both --val-ann and --val-images" in line
    other = _edited(data, tmp_path, lambda d: d["categories"][0].update(name="oval"))
    line = in_process(capsys, "evaluate", "--checkpoint", ckpt, "--val-ann", other, "--val-images",
                      data["train_images"])
    assert "edited.json differ from those of the checkpoint" in line and "oval" in line
    line = in_process(capsys, "evaluate", "--checkpoint", ckpt, "--split", " ")
    assert "--split is empty" in line
    line = in_process(capsys, "evaluate", "--checkpoint", ckpt, "--max-images", "0")
    assert "--max-images must be >= 1" in line


def _many_truncated_images(paths, tmp_path, count: int = 2001):
    """``count`` images (more than the checks decode) cycling through the training set's annotations, each file a
    hard link to a truncated copy of its image: the header is fine, the pixels cannot be decoded."""
    d = json.load(open(paths["train_ann"]))
    folder = tmp_path / "many"
    folder.mkdir()
    for im in d["images"]:
        raw = open(os.path.join(paths["train_images"], im["file_name"]), "rb").read()
        (tmp_path / im["file_name"]).write_bytes(raw[: len(raw) // 2])
    images, anns = [], []
    for i in range(count):
        src = d["images"][i % len(d["images"])]
        os.link(tmp_path / src["file_name"], folder / f"{i}.png")
        images.append({**src, "id": i + 1, "file_name": f"{i}.png"})
        anns += [{**a, "id": len(anns) + k + 1, "image_id": i + 1}
                 for k, a in enumerate(a for a in d["annotations"] if a["image_id"] == src["id"])]
    ann = tmp_path / "many.json"
    ann.write_text(json.dumps({**d, "images": images, "annotations": anns}))
    return str(ann), str(folder)


def test_image_that_fails_to_decode_during_the_run_is_one_line(bad_run, data, tmp_path, capsys):
    """Beyond 2000 images the checks read headers only: an image that fails to decode in a data-loading worker ends
    the run with the one-line error naming it (exit 2, not a traceback); evaluate decodes the images it will read."""
    ann, images = _many_truncated_images(data, tmp_path)
    proc = run("train", "--train-ann", ann, "--train-images", images, *SPLIT, *FAST, "--no-eval", "--num-workers", "1",
               "--output-dir", tmp_path / "o")
    line = usage_error(proc, "train", "cannot read image", "many/")
    assert "image file is truncated" in line and "DataLoader" not in line
    line = in_process(capsys, "evaluate", "--checkpoint", bad_run[1] / "checkpoint.pth", "--val-ann", ann,
                      "--val-images", images, "--max-images", "2")
    assert "cannot read image" in line and "0.png (image 1 of" in line


def test_images_the_crops_grid_reads_are_checked_first(bad_run, data, tmp_path, capsys):
    """--visualize also writes a grid of instances from the first images: with --max-images 1 the checks still
    decode those, so a damaged one stops the run before the evaluation, not after it."""
    folder = tmp_path / "val"
    folder.mkdir()
    names = sorted(os.listdir(data["val_images"]))
    for i, name in enumerate(names):
        raw = open(os.path.join(data["val_images"], name), "rb").read()
        (folder / name).write_bytes(raw if i == 0 else raw[: len(raw) // 2])
    line = in_process(capsys, "evaluate", "--checkpoint", bad_run[1] / "checkpoint.pth", "--val-ann",
                      data["val_ann"], "--val-images", folder, "--max-images", "1", "--visualize", "1",
                      "--output-dir", tmp_path / "o")
    assert "cannot read image" in line and names[1] in line
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_predict_skips_unreadable_images(bad_run, data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(os.listdir(data["val_images"]))
    for n in names[:2]:
        Image.open(os.path.join(data["val_images"], n)).save(images / n)
    raw = open(os.path.join(data["val_images"], names[2]), "rb").read()
    (images / "truncated.png").write_bytes(raw[: len(raw) // 3])
    (images / "notes.jpg").write_text("not an image")
    (images / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link: named, not silently left out
    out = tmp_path / "pred"
    proc = run("predict", "--checkpoint", bad_run[1] / "checkpoint.pth", "--images", images, "--output-dir", out)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "skipped 3 unreadable images: gone.jpg, notes.jpg, truncated.png" in proc.stderr
    written = json.load(open(out / "images.json"))
    assert sorted(i["file_name"] for i in written) == names[:2]
    assert {p["file_name"] for p in json.load(open(out / "predictions.json"))} <= set(names[:2])
    usage_error(run("predict", "--checkpoint", bad_run[1] / "checkpoint.pth", "--images", tmp_path / "none",
                    "--output-dir", out), "predict", "--images", "not found")


def test_predict_pictures_of_images_sharing_a_name_do_not_overwrite(bad_run, data, tmp_path):
    """x.jpg and x.png get a picture each; a picture whose name the file system refuses (an image name of 252 bytes
    plus "_pred.png") is named in a warning with exit code 3, and every image's predictions are still written."""
    images = tmp_path / "images"
    images.mkdir()
    first, second = sorted(os.listdir(data["val_images"]))[:2]
    long = "z" * 248 + ".png"
    for src, name in ((first, "x.png"), (second, "x.jpg"), (first, "y.png"), (second, long), (first, "x.jpg.png")):
        Image.open(os.path.join(data["val_images"], src)).convert("RGB").save(images / name)
    out = tmp_path / "pred"
    proc = run("predict", "--checkpoint", bad_run[1] / "checkpoint.pth", "--images", images, "--output-dir", out,
               "--visualize")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no picture written for 1 images: " + long in proc.stderr
    # x.jpg.png's stem is x.jpg, whose picture by its whole name is x.jpg_pred.png: both take their whole names.
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == ["x.jpg.png_pred.png", "x.jpg_pred.png",
                                                                         "x.png_pred.png", "y_pred.png"]
    assert sorted(i["file_name"] for i in json.load(open(out / "images.json"))) == sorted(
        ["x.png", "x.jpg", "y.png", long, "x.jpg.png"])


@pytest.mark.parametrize("case", ["invalid JSON", "not COCO", "image missing", "annotation file is a folder"])
def test_train_data_file_errors(data, tmp_path, capsys, case):
    ann = tmp_path / "ann.json"
    args = _args(data, train_ann=str(ann))
    if case == "invalid JSON":
        ann.write_text('{"images": [')
        fragment = "is not valid JSON"
    elif case == "not COCO":
        ann.write_text('{"foo": 1}')
        fragment = "is not a COCO instances file"
    elif case == "image missing":
        d = json.load(open(data["train_ann"]))
        d["images"][1]["file_name"] = "gone.png"
        ann.write_text(json.dumps(d))
        fragment = "1 of 6 images of " + str(ann) + " are missing"
    else:
        ann.mkdir()
        fragment = "--train-ann " + str(ann) + " is a folder"
    line = in_process(capsys, "train", *args, *SPLIT, *FAST, "--output-dir", tmp_path / "o")
    assert fragment in line, line


@pytest.mark.parametrize("extra, fragments", [
    (["--dataset", "shapes2", "--split", "circle"], ["unknown categories in split: ['circle']"]),
    (["--dataset", "shapes2", "--split", "ellipse,hexring,lshape,bar,diamond,frame,heart,arrow"],
     ["the synthetic dataset shapes2", "leaves no weak"]),
    (["--dataset", "shapes3"], ["argument --dataset: invalid choice: 'shapes3'"]),
    (["--data-images", "0,5"], ["argument --data-images", "N_TRAIN,N_VAL"]),
    (["--num-workers", "-1"], ["argument --num-workers"]),
    (["--eval-period", "x"], ["argument --eval-period"]),
    (["--prior-scale", "feature_mean"], ["--prior-scale must be one of", "feature_range"]),
    (["--set", "input.min_size_train=0"], ["input.min_size_train must be >= 1"]),
    (["--set", "input.max_size=0"], ["input.max_size must be >= 1"]),
    (["--set", "size_divisibility=16"], ["size_divisibility must be a positive multiple of 32, got 16"]),
    (["--set", "num_classes=3"], ["num_classes=3 but the synthetic dataset shapes has 6 categories"]),
    (["--seed", str(2**40)], ["--seed must be >= 0 and <= 4294967295"]),  # the samplers' 64-bit seeds overflowed
    (["--num-threads", "100000"], ["--num-threads must be >= 1 and <= 1024"]),  # OpenMP segfaulted
])
def test_synthetic_dataset_and_new_option_errors(tmp_path, capsys, extra, fragments):
    """The synthetic dataset's own classes decide the split; nothing is generated before the options pass."""
    line = in_process(capsys, "train", *FAST, "--cache-dir", tmp_path / "cache", *extra, "--output-dir", tmp_path / "o")
    assert all(f in line for f in fragments), line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")


def test_sync_bn_across_cpu_processes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """torch's SyncBatchNorm syncs on GPUs only: under torchrun on the CPU it failed after the data was read."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = in_process(capsys, "train", *FAST, "--cache-dir", tmp_path / "cache", "--set",
                      "roi_heads.box_head_norm=SyncBN", "--output-dir", tmp_path / "o")
    assert "roi_heads.box_head_norm=SyncBN across 2 processes needs CUDA" in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")
    # On GPUs: the heads a process without mask RoIs skips would leave the others waiting in SyncBN's collective.
    from opmask_fast import _extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(_extension, "cuda_built", lambda: True)
    for norm in ("mask_head_norm", "box_head_norm"):  # the preset's prior head of its own has the box head's norm
        line = in_process(capsys, "train", *FAST, "--device", "cuda", "--cache-dir", tmp_path / "cache", "--set",
                          f"roi_heads.{norm}=SyncBN", "--output-dir", tmp_path / "o")
        assert f"roi_heads.{norm}=SyncBN across 2 processes: a process whose batch has no mask RoI" in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")


def test_dataset_with_own_files_and_foreign_weights(data, tmp_path, capsys):
    line = in_process(capsys, "train", *_args(data), "--dataset", "shapes2", *SPLIT, *FAST, "--output-dir", tmp_path)
    assert "--dataset and --data-images choose a synthetic dataset" in line
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    line = in_process(capsys, "train", *_args(data), *SPLIT, *FAST, "--weights", tmp_path / "foreign.pth",
                      "--output-dir", tmp_path / "o")
    assert line.startswith("python -m opmask_fast.train: error: --weights: ") and "matches neither" in line, line
    assert "foreign.pth" in line and not os.path.exists(tmp_path / "o" / "checkpoint.pth")


def test_prior_ablation_needs_a_prior(data, tmp_path, capsys):
    from opmask_fast.config import get_preset
    from opmask_fast.modeling import build_model

    cfg = get_preset("opmask_r18_tiny")
    cfg.use_prior, cfg.num_classes = False, 6
    meta = {"model_config": cfg.to_dict(), "category_ids": list(range(1, 7)),
            "category_names": ["circle", "triangle", "cross", "ring", "square", "star"], "split": SPLIT[1],
            "data": {"val_ann": data["val_ann"], "val_images": data["val_images"]}}
    torch.save({"model": build_model(cfg).state_dict(), "meta": meta}, tmp_path / "baseline.pth")
    line = in_process(capsys, "evaluate", "--checkpoint", tmp_path / "baseline.pth", "--prior-ablation", "zero")
    assert "--prior-ablation needs a model with a prior" in line and "baseline.pth" in line
    line = in_process(capsys, "evaluate", "--checkpoint", tmp_path / "baseline.pth", "--prior-ablation", "half")
    assert "argument --prior-ablation: invalid choice" in line


def test_weights_that_do_not_fit_are_one_line_before_training(data, tmp_path, capsys):
    """A whole model's --weights of another model (here the baseline, no prior head, into OPMask), and a checkpoint
    whose weights do not fit its own config (a key lost), are refused in one line before any training step."""
    from opmask_fast.config import get_preset
    from opmask_fast.modeling import build_model
    from opmask_fast.variants import BASELINE, apply_variant

    cfg = get_preset("opmask_r18_lite")  # the default preset, whose prior has a head of its own
    apply_variant(cfg, BASELINE.name)
    cfg.num_classes = 6
    state = build_model(cfg).state_dict()
    meta = {"model_config": cfg.to_dict(), "category_ids": list(range(1, 7)),
            "category_names": ["circle", "triangle", "cross", "ring", "square", "star"], "split": SPLIT[1],
            "data": {"val_ann": data["val_ann"], "val_images": data["val_images"]}}
    torch.save({"model": state, "meta": meta}, tmp_path / "baseline.pth")
    line = in_process(capsys, "train", *_args(data), *SPLIT, *FAST, "--weights", tmp_path / "baseline.pth",
                      "--output-dir", tmp_path / "o")
    assert line.startswith("python -m opmask_fast.train: error: --weights: ") and "missing in file" in line, line
    assert "prior_head" in line and not os.path.exists(tmp_path / "o" / "checkpoint.pth")
    state.pop("backbone.bottom_up.conv1.weight")
    torch.save({"model": state, "meta": meta}, tmp_path / "damaged.pth")
    for command in (["evaluate", "--checkpoint", tmp_path / "damaged.pth"],
                    ["predict", "--checkpoint", tmp_path / "damaged.pth", "--images", data["val_images"],
                     "--output-dir", tmp_path / "p"]):
        line = in_process(capsys, *command)
        assert "damaged.pth: its weights do not fit its own model config" in line, line
        assert "backbone.bottom_up.conv1.weight" in line

