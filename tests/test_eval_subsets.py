"""Evaluation subsets (issue 26): predictions perfect on one group and wrong on the other, so that every group metric
(strong / weak, ambiguous / unambiguous, boxes / masks / priors / oracle) takes a value that tells it from the others.
With perfect predictions everywhere every subset gives 100, and a weak metric computed over the strong classes (or
from the wrong evaluation) would pass; here it cannot.

The dataset is a real COCO-format one written to tmp_path: 64 x 64 images, four classes (s1, s2 strong; w1, w2 weak),
each class with ambiguous instances (box IoU >= 0.5 with another GT box, of another class) and unambiguous ones.
Every GT mask fills its box exactly, so a box-filling prior pasted into a right box is a perfect mask. A fake model
answers per instance from a policy: a "good" box / mask / prior / oracle mask is the GT one, a "bad" one lies in the
empty bottom-right corner (IoU 0 with every GT), at a lower score than any good detection. (The box sizes are ones
where a box-filling 7 x 7 map pastes to the whole box: pasting fades over the outer half cell, so the corners of e.g. a
20-pixel box fall below 0.5.)
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from opmask_fast.data import CocoInstances
from opmask_fast.evaluation import evaluate_model
from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids, evaluate, subset_ap
from opmask_fast.evaluation.mask_encoding import paste_maps

SIZE = 64
CATS = {1: "s1", 2: "s2", 3: "w1", 4: "w2"}
STRONG, WEAK = {1, 2}, {3, 4}
# per image: (category, [x, y, w, h], ambiguous); nothing reaches the corner x, y >= 56
IMAGES = [
    [(1, [2, 2, 14, 14], True), (3, [4, 2, 14, 14], True), (2, [40, 40, 12, 12], False)],
    [(2, [2, 2, 14, 14], True), (4, [2, 4, 14, 14], True), (3, [40, 40, 12, 12], False)],
    [(1, [2, 2, 14, 14], False), (4, [40, 40, 12, 12], False)],
    [(3, [2, 2, 14, 14], True), (4, [4, 4, 14, 14], True), (1, [40, 40, 12, 12], False), (2, [30, 6, 10, 10], False)],
]
CORNER = [58.0, 58.0, 62.0, 62.0]  # xyxy of every "bad" box and mask


def _rect(box_xywh):
    x, y, w, h = box_xywh
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def _rle(bitmap):
    rle = mask_utils.encode(np.asfortranarray(bitmap))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("subsets")
    images, anns = [], []
    for i, instances in enumerate(IMAGES):
        # the grey level names the image: the fake model reads it back
        Image.fromarray(np.full((SIZE, SIZE, 3), 10 * (i + 1), np.uint8)).save(root / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE})
        for cat, box, _ in instances:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": box, "iscrowd": 0,
                         "area": box[2] * box[3], "segmentation": _rle(_rect(box))})
    cats = [{"id": c, "name": n} for c, n in CATS.items()]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    ds = CocoInstances(ann_file=str(root / "ann.json"), image_dir=str(root), split="s1,s2", masks="none")
    assert ds.strong_ids == STRONG and ds.weak_ids == WEAK
    return ds


class PolicyModel(torch.nn.Module):
    """Detections and oracle masks from the GT of the image it is shown, each part good or bad as `policy(category,
    ambiguous)` says: a dict with "box", "mask", "prior", "oracle_mask", "oracle_prior" -> bool."""

    def __init__(self, dataset, policy):
        super().__init__()
        self.dataset, self.policy = dataset, policy

    def _record(self, image):
        index = round(float(image[0, 0, 0]) / 10) - 1
        return self.dataset.records[index], IMAGES[index]

    def forward(self, images, output_sizes=None):
        record, spec = self._record(images[0])
        boxes, masks, priors, scores, labels = [], [], [], [], []
        for a, (cat, box, amb) in zip(record["anns"], spec):
            assert a["ann"]["category_id"] == cat
            p = self.policy(cat, amb)
            boxes.append(list(a["box"]) if p["box"] else CORNER)
            masks.append(_rect(box) if p["mask"] else _rect([58, 58, 4, 4]))
            priors.append(torch.full((7, 7), 1.0 if p["prior"] else 0.0))
            scores.append(0.9 if p["mask"] else 0.3)  # a bad mask ranks below every good one
            labels.append(self.dataset.id_to_contiguous[cat])
        return [{"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels),
                 "masks": torch.from_numpy(np.stack(masks)).bool(), "priors": torch.stack(priors)}]

    def predict_masks_for_boxes(self, images, boxes, labels, output_sizes=None):
        record, spec = self._record(images[0])
        assert boxes[0].shape[0] == len(spec)
        masks, priors = [], []
        for cat, box, amb in spec:
            p = self.policy(cat, amb)
            masks.append(_rect(box) if p["oracle_mask"] else _rect([58, 58, 4, 4]))
            priors.append(torch.full((7, 7), 1.0 if p["oracle_prior"] else 0.0))
        return [{"masks": torch.from_numpy(np.stack(masks)).bool(), "priors": torch.stack(priors)}]


def _all(good):
    return dict.fromkeys(("box", "mask", "prior", "oracle_mask", "oracle_prior"), good)


GROUP_KEYS = ("box_AP", "mask_AP", "prior_AP", "oracle_mIoU", "oracle_prior_mIoU")


def _expect_groups(m, strong, weak):
    for key in GROUP_KEYS:
        base = key + "_{}"
        assert m[base.format("strong")] == pytest.approx(strong), base.format("strong")
        assert m[base.format("weak")] == pytest.approx(weak), base.format("weak")
    assert m["mask_AP50_strong"] == pytest.approx(strong) and m["mask_AP50_weak"] == pytest.approx(weak)


def test_the_dataset_is_what_the_tests_assume(dataset):
    """The ambiguous split of the dataset is the designed one, each class has both kinds, and a box-filling prior
    pasted into a GT box is exactly its GT mask."""
    amb, rest = ambiguous_ann_ids(dataset.coco, [r["image_id"] for r in dataset.records])
    designed = {(100 + i, tuple(box)): a for i, inst in enumerate(IMAGES) for _, box, a in inst}
    anns = dataset.coco.dataset["annotations"]
    assert amb == {a["id"] for a in anns if designed[a["image_id"], tuple(a["bbox"])]}
    assert rest == {a["id"] for a in anns if not designed[a["image_id"], tuple(a["bbox"])]}
    for c in CATS:
        kinds = {amb_ for inst in IMAGES for cat, _, amb_ in inst if cat == c}
        assert kinds == {True, False}, c
    for inst in IMAGES:
        for _, (x, y, w, h), _ in inst:
            pasted = paste_maps(torch.ones(1, 7, 7), torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
                                (SIZE, SIZE), threshold=0.5)[0]
            assert torch.equal(pasted, torch.from_numpy(_rect([x, y, w, h])).bool())


@pytest.mark.parametrize("good", ["strong", "weak"])
def test_one_group_perfect_the_other_wrong(dataset, good):
    """Boxes, masks, priors and oracle masks perfect on one class group and wrong on the other: every metric of the good
    group is 100 and every one of the other 0 (in both directions), the class-mean ones 50.

    Fails on (metrics.py): any weak metric computed over the strong classes (`subset_ap(box, strong)` for box_AP_weak,
    `subset_ap(segm, strong)` for mask_AP_weak, `subset_ap(segm_amb, strong)` for mask_AP_weak_ambiguous,
    `subset_ap(prior, strong)` for prior_AP_weak, `_group_miou(oracle["mask"], strong)` for oracle_mIoU_weak) or the
    reverse; `evaluate_model` taking `weak_ids = strong_ids`; `subset_ap` ignoring its `category_ids`."""
    groups = {"strong": STRONG, "weak": WEAK}
    model = PolicyModel(dataset, lambda cat, amb: _all(cat in groups[good]))
    m = evaluate_model(model, dataset, strong_ids=STRONG)
    hi, lo = (100.0, 0.0) if good == "strong" else (0.0, 100.0)
    _expect_groups(m, hi, lo)
    for key in ("mask_AP_weak_ambiguous", "mask_AP_weak_unambiguous"):
        assert m[key] == pytest.approx(lo), key
    for key in ("bbox_AP", "mask_AP", "prior_AP", "mask_AP_ambiguous", "mask_AP_unambiguous"):
        assert m[key] == pytest.approx(50.0), key
    assert m["mask_AP_per_class"] == pytest.approx({"s1": hi, "s2": hi, "w1": lo, "w2": lo})
    assert m["oracle_IoU_per_class"] == pytest.approx({"s1": hi, "s2": hi, "w1": lo, "w2": lo})
    assert m["strong_categories"] == ["s1", "s2"] and m["weak_categories"] == ["w1", "w2"]
    assert m["num_gt_ambiguous"] == 6 and m["num_gt_unambiguous"] == 6


def test_each_metric_reads_its_own_evaluation(dataset):
    """All boxes right; masks right only on the ambiguous instances; priors right on the weak classes only; oracle
    masks right on the weak classes, oracle priors on the strong ones. Then box_AP_weak 100, mask_AP_(weak_)ambiguous
    100, mask_AP_(weak_)unambiguous 0, prior_AP_weak 100, prior_AP_strong 0, oracle_mIoU_weak 100,
    oracle_prior_mIoU_weak 0, and mask_AP_weak and mask_AP_strong strictly between.

    Fails on: mask_AP_(weak_)ambiguous / _unambiguous read from the other split (`segm_rest` / `segm_amb` swapped);
    box_AP_weak from the mask evaluation (`subset_ap(segm, weak)`); prior_AP_weak from the mask evaluation;
    oracle_mIoU_weak from the oracle priors (`oracle["prior"]`)."""
    def policy(cat, amb):
        weak = cat in WEAK
        return {"box": True, "mask": amb, "prior": weak, "oracle_mask": weak, "oracle_prior": not weak}

    m = evaluate_model(PolicyModel(dataset, policy), dataset, strong_ids=STRONG)
    want = {"bbox_AP": 100.0, "box_AP_strong": 100.0, "box_AP_weak": 100.0,
            "mask_AP_weak_ambiguous": 100.0, "mask_AP_weak_unambiguous": 0.0,
            "mask_AP_ambiguous": 100.0, "mask_AP_unambiguous": 0.0,
            "prior_AP_weak": 100.0, "prior_AP_strong": 0.0, "prior_AP": 50.0,
            "oracle_mIoU_weak": 100.0, "oracle_mIoU_strong": 0.0,
            "oracle_prior_mIoU_weak": 0.0, "oracle_prior_mIoU_strong": 100.0}
    for key, value in want.items():
        assert m[key] == pytest.approx(value), key
    for key in ("mask_AP_weak", "mask_AP_strong", "mask_AP"):
        assert 10 < m[key] < 90, key


class EmptyModel(PolicyModel):
    """Detects nothing; returns priors (an empty Tensor[0, 7, 7]) or, with ``priors=False``, none at all."""

    def __init__(self, dataset, priors: bool):
        super().__init__(dataset, None)
        self.priors = priors

    def forward(self, images, output_sizes=None):
        h, w = images[0].shape[-2:]
        out = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
               "masks": torch.zeros(0, h, w, dtype=torch.bool)}
        return [{**out, "priors": torch.zeros(0, 7, 7)} if self.priors else out]


def test_no_detection_scores_zero_and_a_model_without_priors_none(dataset):
    """A model that returns priors but detects nothing has prior AP 0, as its mask AP (not empty, which means no
    ground truth); a model that returns no priors has no prior AP."""
    m = evaluate_model(EmptyModel(dataset, priors=True), dataset, strong_ids=STRONG, oracle=False)
    for key in ("mask_AP", "mask_AP_weak", "prior_AP", "prior_AP_weak", "prior_AP_strong"):
        assert m[key] == 0.0, key
    m = evaluate_model(EmptyModel(dataset, priors=False), dataset, strong_ids=STRONG, oracle=False)
    assert m["mask_AP"] == 0.0 and all(math.isnan(m[k]) for k in ("prior_AP", "prior_AP_weak", "prior_AP_strong"))


def test_subset_ap_averages_only_the_asked_classes(dataset):
    """`subset_ap` on results right for class s1 and w2, wrong for s2 and w1: 100 on {s1}, 0 on {w1}, 50 on {s1, w1}
    and on all, NaN on a class that is not in the evaluation.

    Fails on: `subset_ap` ignoring `category_ids`, or indexing precision by position in `category_ids` instead of in
    the evaluation's catIds."""
    res = []
    for a in dataset.coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        good = a["category_id"] in (1, 4)
        res.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                    "bbox": [float(x), float(y), float(w), float(h)] if good else [58.0, 58.0, 4.0, 4.0]})
    ev = evaluate(dataset.coco, res, "bbox", image_ids=[r["image_id"] for r in dataset.records])
    assert subset_ap(ev, [1])["AP"] == pytest.approx(100.0)
    assert subset_ap(ev, [4])["AP"] == pytest.approx(100.0)
    assert subset_ap(ev, [3])["AP"] == 0.0 and subset_ap(ev, [2])["AP50"] == 0.0
    assert subset_ap(ev, [3, 1])["AP"] == pytest.approx(50.0)
    assert subset_ap(ev)["AP"] == pytest.approx(50.0)
    assert math.isnan(subset_ap(ev, [99])["AP"])
