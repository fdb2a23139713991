"""The second synthetic dataset (shapes2): deterministic, valid COCO, its colour and crowding rules, the embedded
dataset's files unchanged by the style field, and the --dataset plumbing of train/evaluate/compare."""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from opmask_fast.cli import compare, compare_runs
from opmask_fast.data import CocoInstances, DATASETS, SyntheticSpec, dataset_spec, ensure_synthetic, load_coco
from opmask_fast.data import synthetic_shapes2 as s2
from opmask_fast.data.synthetic import cache_key
from opmask_fast.training.checkpoint import load_checkpoint
from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids
from opmask_fast.cli.options import resolve_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = dataset_spec("shapes2", seed=7, num_train=40, num_val=4)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return ensure_synthetic(SPEC, str(tmp_path_factory.mktemp("s2")))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_embedded_dataset_key_and_files_unchanged(tmp_path):
    assert DATASETS["shapes"] == SyntheticSpec()
    assert cache_key(SyntheticSpec()) == "shapes-v1-s0-n1000-200-px128-h15-v0.25"
    paths = ensure_synthetic(SyntheticSpec(seed=5, num_train=3, num_val=2), str(tmp_path))
    assert paths["train_ann"] == str(tmp_path / "synthetic" / "shapes-v1-s5-n3-2-px128-h15-v0.25" / "annotations" /
                                     "instances_train.json")
    # The annotation file as the generator wrote it before it had a style field (numpy's PCG64 streams and
    # pycocotools' RLE are stable, so this digest changes only when the data does).
    assert _sha(paths["train_ann"]) == "74e4f6c70ea33e309cabe969b71dbe8e792ac55b323736624c885971aa745782"
    complete = json.load(open(os.path.join(os.path.dirname(paths["train_images"]), "COMPLETE")))
    assert "style" not in complete and "style" not in json.load(open(paths["train_ann"]))["info"]["spec"]
    with pytest.raises(ValueError, match="unknown synthetic dataset style 'shapes3'"):
        SyntheticSpec(style="shapes3")


def test_deterministic_per_seed(generated, tmp_path):
    assert os.path.basename(os.path.dirname(generated["train_images"])) == "shapes2-v1-s7-n40-4-px160-h10-v0.2"
    again = ensure_synthetic(SPEC, str(tmp_path / "again"))
    for split in ("train", "val"):
        assert _sha(generated[f"{split}_ann"]) == _sha(again[f"{split}_ann"])
    for f in sorted(os.listdir(generated["train_images"]))[:5]:
        assert _sha(os.path.join(generated["train_images"], f)) == _sha(os.path.join(again["train_images"], f))
    other = ensure_synthetic(dataset_spec("shapes2", seed=8, num_train=40, num_val=4), str(tmp_path / "other"))
    assert _sha(other["train_ann"]) != _sha(generated["train_ann"])


def test_valid_coco_with_variable_sizes(generated):
    coco = load_coco(generated["train_ann"])
    data = coco.dataset
    assert [c["name"] for c in data["categories"]] == list(s2.CLASSES)
    assert data["info"]["strong_categories"] == list(s2.STRONG_CLASSES)
    assert data["info"]["random_hue_categories"] == list(s2.RANDOM_HUE_CLASSES)
    sizes = {(im["height"], im["width"]) for im in data["images"]}
    assert len(sizes) > 3 and all(min(hw) == 160 and 160 <= max(hw) <= 240 for hw in sizes)
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 9))
    for im in data["images"]:
        pixels = np.asarray(Image.open(os.path.join(generated["train_images"], im["file_name"])))
        assert pixels.shape == (im["height"], im["width"], 3)
        masks = []
        for a in coco.imgToAnns[im["id"]]:
            m = mask_utils.decode(a["segmentation"])
            assert m.shape == (im["height"], im["width"]) and m.sum() == a["area"] >= 16
            ys, xs = np.nonzero(m)
            x, y, w, h = a["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box from the mask
            masks.append(m)
        assert np.stack(masks).sum(0).max() <= 1  # visible parts never overlap


def _mean_hue(hue_deg, mask):
    z = np.exp(1j * np.radians(hue_deg[mask.astype(bool)])).mean()
    return math.degrees(np.angle(z))


def _circular_std_deg(hues):
    return math.degrees(math.sqrt(-2 * math.log(abs(np.exp(1j * np.radians(hues)).mean()))))


def test_colour_tied_to_class_for_half_of_the_classes(generated):
    coco = load_coco(generated["train_ann"])
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    hues = {n: [] for n in names.values()}
    for im in coco.dataset["images"]:
        hsv = np.asarray(Image.open(os.path.join(generated["train_images"], im["file_name"])).convert("HSV"))
        for a in coco.imgToAnns[im["id"]]:
            mask = mask_utils.decode(a["segmentation"])
            hues[names[a["category_id"]]].append(_mean_hue(hsv[..., 0] / 256 * 360, mask))
    spread = {n: _circular_std_deg(h) for n, h in hues.items()}
    assert min(len(h) for h in hues.values()) >= 15
    for n in s2.RANDOM_HUE_CLASSES:
        assert spread[n] > 60, spread
    for n in set(s2.CLASSES) - set(s2.RANDOM_HUE_CLASSES):
        assert spread[n] < 20, spread
    # each group has both kinds
    for group in (s2.STRONG_CLASSES, s2.WEAK_CLASSES):
        assert 0 < len(set(group) & set(s2.RANDOM_HUE_CLASSES)) < len(group)


def test_crowding_keeps_the_partial_supervision_difficulty(generated):
    coco = load_coco(generated["train_ann"])
    strong = {c["id"] for c in coco.dataset["categories"] if c["name"] in s2.STRONG_CLASSES}
    inside = weak = at_border = 0
    for im in coco.dataset["images"]:
        anns = coco.imgToAnns[im["id"]]
        for a in anns:
            x, y, w, h = a["bbox"]
            at_border += x == 0 or y == 0 or x + w == im["width"] or y + h == im["height"]
            if a["category_id"] in strong:
                continue
            weak += 1
            inside += any(b["category_id"] in strong and b["bbox"][0] <= x and b["bbox"][1] <= y and
                          x + w <= b["bbox"][0] + b["bbox"][2] and y + h <= b["bbox"][1] + b["bbox"][3] for b in anns)
    n = len(coco.dataset["annotations"])
    assert n / 40 > 6 and 0.1 < inside / weak < 0.3 and at_border / n > 0.05
    amb, rest = ambiguous_ann_ids(coco, coco.getImgIds())
    assert 0.02 < len(amb) / n < 0.15


def test_default_split_comes_with_the_dataset(tmp_path, generated):
    def ns(**kw):
        return argparse.Namespace(**{"cache_dir": str(tmp_path), "data_images": (3, 2), "dataset": None, **kw})

    paths = resolve_data(ns(dataset="shapes2"))
    assert paths["default_split"] == "ellipse,hexring,lshape,bar" and paths["dataset"] == "shapes2"
    assert os.path.isabs(paths["val_ann"]) and "shapes2-v1-s0-n3-2" in paths["val_ann"]
    assert resolve_data(ns())["default_split"] == "circle,triangle,cross"
    ds = CocoInstances(ann_file=paths["train_ann"], image_dir=paths["train_images"], split=paths["default_split"])
    assert [n for i, n in zip(ds.category_ids, ds.category_names) if i in ds.strong_ids] == list(s2.STRONG_CLASSES)
    with pytest.raises(ValueError, match="not both"):
        resolve_data(ns(dataset="shapes2", train_ann=generated["train_ann"]))


def test_compare_passes_the_dataset_and_picks_its_output_dir():
    args = compare.build_parser().parse_args(["--dataset", "shapes2", "--data-images", "20,5"])
    assert compare.output_root(args) == os.path.join("outputs", "compare_shapes2")
    cmd = compare_runs.train_command("baseline", 1, args, "out")
    assert cmd[cmd.index("--dataset") + 1] == "shapes2" and cmd[cmd.index("--data-images") + 1] == "20,5"
    assert compare.output_root(compare.build_parser().parse_args([])) == os.path.join("outputs", "compare")
    assert compare.output_root(compare.build_parser().parse_args(["--output-dir", "x"])) == "x"


def test_train_and_evaluate_cli_on_shapes2(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    out, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "opmask_fast.train", "--dataset", "shapes2", "--data-images", "6,4",
                           "--cache-dir", cache, "--iters", "2", "--batch-size", "2", "--eval-max-images", "4",
                           "--quiet", "--output-dir", out], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["weak_categories"] == list(s2.WEAK_CLASSES) and metrics["num_images"] == 4
    meta = load_checkpoint(os.path.join(out, "checkpoint.pth"))["meta"]
    assert meta["data"]["dataset"] == "shapes2" and meta["split"] == "ellipse,hexring,lshape,bar"
    # evaluate finds the shapes2 validation set from the checkpoint alone, from another folder
    ev = subprocess.run([sys.executable, "-m", "opmask_fast.evaluate", "--checkpoint",
                         os.path.join(out, "checkpoint.pth"), "--output-dir", "ev", "--no-oracle"],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    on_disk = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert on_disk["num_images"] == 4 and on_disk["strong_categories"] == list(s2.STRONG_CLASSES)
    bad = subprocess.run([sys.executable, "-m", "opmask_fast.train", "--dataset", "shapes2", "--data-images", "6"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "python -m opmask_fast.train: error: argument --data-images" in bad.stderr
