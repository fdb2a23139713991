"""Evaluation: COCO AP from ground-truth-derived predictions, class-group and ambiguous splits, prior AP, pasting."""

import json
import math

import numpy as np
import pytest
import torch

from opmask_fast.data import CocoInstances, ResizeFlip, SyntheticSpec, decode_segmentation, ensure_synthetic
from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids, evaluate, subset_ap
from opmask_fast.evaluation import compute_metrics, evaluate_model, format_table, oracle_ious, run_inference
from opmask_fast.evaluation.mask_encoding import mask_iou, paste_maps


class GroundTruthModel(torch.nn.Module):
    """Answers with the ground truth of the images it is shown, in dataset order (a perfect model)."""

    def __init__(self, dataset, keep=lambda ann: True):
        super().__init__()
        self.dataset, self.keep, self.calls, self.oracle_calls = dataset, keep, 0, 0

    def forward(self, images, output_sizes=None):
        record = self.dataset.records[self.calls]
        self.calls += 1
        h, w = output_sizes[0]
        anns = [a for a in record["anns"] if self.keep(a["ann"])]
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([decode_segmentation(a["ann"]["segmentation"], h, w) for a in anns])
                                 if anns else np.zeros((0, h, w), np.uint8)).bool()
        labels = torch.tensor([self.dataset.id_to_contiguous[a["ann"]["category_id"]] for a in anns], dtype=torch.int64)
        priors = torch.ones((len(anns), 7, 7))  # a box-filling prior
        return [{"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels, "masks": masks, "priors": priors}]

    def predict_masks_for_boxes(self, images, boxes, labels, output_sizes=None):
        record = self._next()
        assert len(record["anns"]) == boxes[0].shape[0]
        h, w = output_sizes[0]
        masks = np.stack([decode_segmentation(a["ann"]["segmentation"], h, w) for a in record["anns"]])
        return [{"masks": torch.from_numpy(masks).bool(), "priors": torch.ones((len(record["anns"]), 7, 7))}]

    def _next(self):
        # The oracle pass visits, in dataset order, the images with a GT mask (alone or interleaved with inference).
        while True:
            record = self.dataset.records[self.oracle_calls % len(self.dataset.records)]
            self.oracle_calls += 1
            if any(a["ann"].get("segmentation") for a in record["anns"]):
                return record


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=3, num_train=2, num_val=8), str(tmp_path_factory.mktemp("cache")))
    return CocoInstances(ann_file=paths["val_ann"], image_dir=paths["val_images"], split="circle,triangle,cross",
                         transform=ResizeFlip(short_sides=(96,), max_side=200), masks="none")


def test_ground_truth_predictions_give_ap_100(val_set):
    model = GroundTruthModel(val_set)
    inf = run_inference(model, val_set)
    metrics = compute_metrics(val_set, inf, None, strong_ids=val_set.strong_ids, weak_ids=val_set.weak_ids)
    for key in ("bbox_AP", "mask_AP", "mask_AP_strong", "mask_AP_weak", "box_AP_weak", "mask_AP_ambiguous",
                "mask_AP_unambiguous", "mask_AP50"):
        assert metrics[key] == pytest.approx(100.0), key
    assert metrics["num_gt_ambiguous"] > 0 and metrics["num_gt_unambiguous"] > 0
    assert metrics["weak_categories"] == ["ring", "square", "star"]
    # A box-filling prior is a poor mask for rings, crosses and stars: far below 100, above 0.
    assert 0 < metrics["prior_AP"] < 100
    assert "mask AP weak" in format_table(metrics)


def test_oracle_iou_of_ground_truth_is_100(val_set):
    ora = oracle_ious(GroundTruthModel(val_set), val_set)
    assert set(ora["mask"]) == set(val_set.category_ids)
    assert all(v == pytest.approx(1.0) for vals in ora["mask"].values() for v in vals)
    # The box-filling prior is exact only where the shape fills its box.
    assert all(0 < v <= 1 for vals in ora["prior"].values() for v in vals)


def test_missing_weak_predictions_zero_weak_ap_only(val_set):
    weak = val_set.weak_ids
    model = GroundTruthModel(val_set, keep=lambda ann: ann["category_id"] not in weak)
    metrics = compute_metrics(val_set, run_inference(model, val_set), None, strong_ids=val_set.strong_ids,
                              weak_ids=weak)
    assert metrics["mask_AP_strong"] == pytest.approx(100.0)
    assert metrics["mask_AP_weak"] == 0.0
    assert 0 < metrics["mask_AP"] < 100


def _coco_json(tmp_path, anns):
    images = [{"id": 1, "file_name": "a.png", "height": 50, "width": 50}]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    full = []
    for i, (cat, (x, y, w, h)) in enumerate(anns):
        full.append({"id": i + 1, "image_id": 1, "category_id": cat, "iscrowd": 0, "area": w * h, "bbox": [x, y, w, h],
                     "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": full, "categories": cats}))
    return str(path)


def test_ambiguous_split(tmp_path):
    from opmask_fast.data import load_coco

    # Boxes 1 and 2 overlap with IoU 0.8 (ambiguous); box 3 touches box 2 with IoU just below 0.5; box 4 is alone.
    anns = [(1, (0, 0, 20, 20)), (2, (0, 0, 20, 16)), (1, (0, 4, 20, 12.2)), (2, (30, 30, 10, 10))]
    coco = load_coco(_coco_json(tmp_path, anns))
    amb, rest = ambiguous_ann_ids(coco, [1])
    # IoU(3, 2) = 240/320 = 0.76 -> ambiguous too; IoU(3,1) = 0.61.
    assert amb == {1, 2, 3} and rest == {4}
    anns[2] = (1, (0, 10, 20, 10))  # IoU with box 2: 120/(320+200-120) = 0.3; with box 1: 200/400 = 0.5 (boundary)
    coco = load_coco(_coco_json(tmp_path, anns))
    amb, rest = ambiguous_ann_ids(coco, [1])
    assert amb == {1, 2, 3} and rest == {4}
    anns[2] = (1, (0, 11, 20, 10))  # IoU with box 1: 180/420 < 0.5
    coco = load_coco(_coco_json(tmp_path, anns))
    amb, rest = ambiguous_ann_ids(coco, [1])
    assert amb == {1, 2} and rest == {3, 4}

    # Predicting only the ambiguous instances: AP 100 on them, 0 on the rest; ignoring does not leak across calls.
    res = [{"image_id": 1, "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"]}
           for a in coco.loadAnns(sorted(amb))]
    assert subset_ap(evaluate(coco, res, "bbox", image_ids=[1], ignore_ann_ids=rest))["AP"] == pytest.approx(100)
    assert subset_ap(evaluate(coco, res, "bbox", image_ids=[1], ignore_ann_ids=amb))["AP"] == 0.0
    assert subset_ap(evaluate(coco, res, "bbox", image_ids=[1]))["AP"] < 100


def test_box_only_ground_truth_stays_in_the_ambiguous_split_after_mask_ap(tmp_path):
    # Box-only GT (its mask unusable) is a crowd-like region for mask AP only: the evaluation changes a copy, so the
    # split read after it still counts the box-only instance and its overlap with its neighbour.
    from PIL import Image

    ann = _coco_json(tmp_path, [(1, (0, 0, 20, 20)), (2, (0, 0, 20, 16)), (2, (30, 30, 10, 10))])
    data = json.loads(open(ann).read())
    data["annotations"][1]["segmentation"] = []  # box-only
    open(ann, "w").write(json.dumps(data))
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    ds = CocoInstances(ann_file=ann, image_dir=str(tmp_path / "img"), masks="none")
    before = ambiguous_ann_ids(ds.coco, [1])
    assert before == ({1, 2}, {3})
    res = [{"image_id": 1, "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"],
            "segmentation": ds.coco.annToRLE(a)} for a in ds.coco.loadAnns([1, 3])]
    for iou_type in ("segm", "bbox", "segm"):
        ev = evaluate(ds.coco, res, iou_type, image_ids=[1])
        assert ambiguous_ann_ids(ds.coco, [1]) == before and ds.coco.anns[2]["iscrowd"] == 0
        # mask AP: the box-only GT neither missed nor matched (100); box AP: it is missed (class 2's AP 50)
        assert subset_ap(ev, [2])["AP"] == pytest.approx(100.0 if iou_type == "segm" else 50.0, abs=1.0)


def test_no_detections_and_empty_subset(tmp_path):
    from opmask_fast.data import load_coco

    coco = load_coco(_coco_json(tmp_path, [(1, (0, 0, 20, 20))]))
    for iou_type in ("segm", "bbox"):  # no detection: 0 where there is ground truth, NaN (null) where there is none
        empty = evaluate(coco, [], iou_type, image_ids=[1])
        assert subset_ap(empty) == {"AP": 0.0, "AP50": 0.0} and subset_ap(empty, [1])["AP"] == 0.0
        assert math.isnan(subset_ap(empty, [2])["AP"])
    assert subset_ap(None) == {"AP": 0.0, "AP50": 0.0}
    det = {"image_id": 1, "category_id": 1, "score": 1.0, "bbox": [0, 0, 20, 20]}
    ev = evaluate(coco, [det], "bbox", image_ids=[1])
    assert math.isnan(subset_ap(ev, [2])["AP"])  # class 2 has no ground truth here
    with pytest.raises(ValueError, match="iou_type"):
        evaluate(coco, [], "keypoints", image_ids=[1])


def test_evaluate_leaves_the_results_as_given(tmp_path):
    """The same results list serves box, mask and subset evaluations in turn: none may change it for the next."""
    import copy

    from pycocotools import mask as mask_utils

    from opmask_fast.data import load_coco

    coco = load_coco(_coco_json(tmp_path, [(1, (0, 0, 20, 20)), (2, (25, 25, 20, 20))]))
    bitmap = np.zeros((50, 50), np.uint8, order="F")
    bitmap[0:20, 0:20] = 1
    rle = mask_utils.encode(bitmap)
    rle["counts"] = rle["counts"].decode("ascii")
    res = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0.0, 0.0, 20.0, 20.0], "segmentation": rle},
           {"image_id": 1, "category_id": 2, "score": 0.8, "bbox": [30.0, 30.0, 10.0, 10.0], "segmentation": rle}]
    before = copy.deepcopy(res)
    first = [subset_ap(evaluate(coco, res, t, image_ids=[1]))["AP"] for t in ("segm", "bbox", "segm")]
    assert res == before
    assert first[0] == first[2]
    # mask AP scores the masks: both masks cover box 1 only, while the second box misses box 2 (IoU 0.25)
    assert first[0] == pytest.approx(50.0) and first[1] == pytest.approx(50.0)


def test_one_backbone_pass_gives_the_two_pass_results(val_set, tmp_path):
    """evaluate_model computes detections and oracle masks from one backbone pass per image (extract/detect): the
    same detections, oracle IoUs and metrics as model(images) and a separate predict_masks_for_boxes pass."""
    from opmask_fast.evaluation.inference import infer_images, oracle_images

    from test_model import _cfg, _model

    model = _model(_cfg(num_classes=len(val_set.category_ids)), seed=1).eval()
    with torch.no_grad():  # a random model detects little: lower the bar so detections and masks exist
        model.roi_heads.box_head.cls_score.bias[:-1] += 3.0
    idx = range(len(val_set))
    fused = infer_images(model, val_set, idx, oracle=True)
    plain, oracle = infer_images(model, val_set, idx), oracle_images(model, val_set, idx)
    assert sum(len(e["results"]) for e in plain) > 0 and oracle
    for a, b in zip(fused, plain):
        assert a["results"] == b["results"] and a["prior_results"] == b["prior_results"]
    assert [e["oracle"] for e in fused if e["oracle"]] == oracle
    passes = []
    hook = model.backbone.register_forward_hook(lambda *a: passes.append(1))
    metrics = evaluate_model(model, val_set, strong_ids=val_set.strong_ids, output_dir=str(tmp_path))
    hook.remove()
    assert len(passes) == len(val_set)  # one backbone pass per image, oracle included
    two_pass = compute_metrics(val_set, run_inference(model, val_set), oracle_ious(model, val_set),
                               strong_ids=val_set.strong_ids, weak_ids=val_set.weak_ids)
    for key, value in two_pass.items():
        if key != "seconds_per_image":
            assert metrics[key] == value or (value != value and metrics[key] != metrics[key]), key
    # a model without extract/detect (the ground-truth stand-in) takes the two-pass route
    gt = evaluate_model(GroundTruthModel(val_set), val_set, strong_ids=val_set.strong_ids)
    assert gt["oracle_mIoU_weak"] == pytest.approx(100.0) and gt["mask_AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_subset_ap_matches_pycocotools_summary(val_set, iou_type):
    """AP and AP50 over all classes as pycocotools' own summary gives them (stats[0], stats[1]), on noisy detections:
    shifted, rescaled and shuffled ground truth with random scores, and random false positives."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    coco = val_set.coco
    rng = np.random.default_rng(0)  # seeded: the same detections (and the same check) every run
    res = []
    for img_id in val_set.image_ids:
        info = coco.imgs[img_id]
        h, w = info["height"], info["width"]
        anns = coco.imgToAnns.get(img_id, [])
        boxes = [a["bbox"] for a in anns] + [[*rng.uniform(0, 40, 2), *rng.uniform(4, 40, 2)] for _ in range(3)]
        cats = [a["category_id"] for a in anns] + list(rng.choice(sorted(coco.cats), 3))
        for (x, y, bw, bh), c in zip(boxes, cats):
            x, y = x + rng.normal(0, 2), y + rng.normal(0, 2)
            bw, bh = bw * rng.uniform(0.7, 1.3), bh * rng.uniform(0.7, 1.3)
            bitmap = np.zeros((h, w), np.uint8, order="F")
            bitmap[max(int(y), 0):max(int(y + bh), 0), max(int(x), 0):max(int(x + bw), 0)] = 1
            rle = mask_utils.encode(bitmap)
            rle["counts"] = rle["counts"].decode("ascii")
            res.append({"image_id": img_id, "category_id": int(c), "score": float(rng.uniform()),
                        "bbox": [float(x), float(y), float(bw), float(bh)], "segmentation": rle})
    ours = subset_ap(evaluate(coco, res, iou_type, image_ids=list(val_set.image_ids)))
    plain = COCOeval(coco, coco.loadRes([{k: v for k, v in r.items() if iou_type == "bbox" or k != "bbox"}
                                         for r in res]), iou_type)
    plain.params.imgIds = list(val_set.image_ids)
    plain.evaluate()
    plain.accumulate()
    plain.summarize()
    assert 0 < plain.stats[0] < 1  # neither perfect nor empty: the comparison means something
    assert ours["AP"] == pytest.approx(plain.stats[0] * 100, abs=1e-9)
    assert ours["AP50"] == pytest.approx(plain.stats[1] * 100, abs=1e-9)


def test_paste_maps():
    ones = torch.ones((2, 7, 7))
    boxes = torch.tensor([[2.0, 3.0, 10.0, 8.0], [-5.0, -5.0, 4.0, 4.0]])
    out = paste_maps(ones, boxes, (12, 14))
    expected = torch.zeros((12, 14), dtype=torch.bool)
    expected[3:8, 2:10] = True
    assert torch.equal(out[0], expected)
    assert out[1].sum() == 16  # clipped to the image: pixels 0..3 in both axes
    # A left-to-right ramp keeps its orientation after pasting.
    ramp = torch.linspace(0, 1, 28).repeat(28, 1)[None]
    vals = paste_maps(ramp, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), (20, 20), threshold=None)[0]
    assert (vals[:, 1:] >= vals[:, :-1]).all() and vals[0, 0] < 0.1 and vals[0, -1] > 0.9
    assert torch.equal(mask_iou(out, out), torch.ones(2))


def test_list_metrics_needs_no_checkpoint(capsys):
    from opmask_fast import evaluate as evaluate_command

    assert evaluate_command.main(["--list-metrics"]) is None
    out = capsys.readouterr().out
    assert "mask_AP_weak" in out and "val_data_dropped" in out and "config_overrides" in out
    with pytest.raises(SystemExit) as e:
        evaluate_command.main([])
    assert e.value.code == 2 and "required: --checkpoint" in capsys.readouterr().err
