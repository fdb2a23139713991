"""The embedded synthetic dataset: deterministic, cached, valid COCO, and built with the intended difficulties."""

import hashlib
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from opmask_fast.data import CocoInstances, STRONG_CLASSES, SyntheticSpec, ensure_synthetic, load_coco
from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids, box_iou_xywh

SPEC = SyntheticSpec(seed=11, num_train=40, num_val=4)


def _digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f != "COMPLETE":
                h.update(f.encode())
                h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return ensure_synthetic(SPEC, str(tmp_path_factory.mktemp("a")))


def test_deterministic_and_cached(generated, tmp_path):
    root = os.path.dirname(generated["train_images"])
    again = ensure_synthetic(SPEC, str(tmp_path))
    assert _digest(root) == _digest(os.path.dirname(again["train_images"]))
    stamp = os.path.getmtime(generated["train_ann"])
    assert ensure_synthetic(SPEC, os.path.dirname(os.path.dirname(root))) == generated  # cached: not rewritten
    assert os.path.getmtime(generated["train_ann"]) == stamp
    other = ensure_synthetic(SyntheticSpec(seed=12, num_train=40, num_val=4), str(tmp_path))
    assert _digest(os.path.dirname(other["train_images"])) != _digest(root)
    assert not [d for d in os.listdir(os.path.join(str(tmp_path), "synthetic")) if ".tmp" in d]


@pytest.mark.parametrize("name", ["shapes", "shapes2"])
def test_several_workers_write_the_same_files(name, tmp_path):
    from opmask_fast.data import dataset_spec
    from opmask_fast.data import synthetic

    spec = dataset_spec(name, seed=3, num_train=2 * synthetic._CHUNK + 7, num_val=5)  # three chunks, a short one last
    one = ensure_synthetic(spec, str(tmp_path / "one"))
    two = ensure_synthetic(spec, str(tmp_path / "two"), workers=2)
    assert _digest(os.path.dirname(one["train_images"])) == _digest(os.path.dirname(two["train_images"]))
    ids = [a["id"] for a in load_coco(two["train_ann"]).dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_valid_coco_with_consistent_boxes_and_masks(generated):
    coco = load_coco(generated["train_ann"])
    data = coco.dataset
    assert [c["name"] for c in data["categories"]] == ["circle", "triangle", "cross", "ring", "square", "star"]
    assert data["info"]["strong_categories"] == list(STRONG_CLASSES)
    assert len(data["images"]) == 40
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == (128, 128) and m.sum() == ann["area"] >= 16
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    # visible masks of one image never overlap (occluded parts belong to the front object only)
    for img_id in coco.getImgIds():
        masks = [mask_utils.decode(a["segmentation"]) for a in coco.imgToAnns[img_id]]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1


def test_has_the_difficulties_it_is_built_for(generated):
    coco = load_coco(generated["train_ann"])
    strong = {c["id"] for c in coco.dataset["categories"] if c["name"] in STRONG_CLASSES}
    inside = weak_total = 0
    for img_id in coco.getImgIds():
        anns = coco.imgToAnns[img_id]
        for a in anns:
            if a["category_id"] in strong:
                continue
            weak_total += 1
            x, y, w, h = a["bbox"]
            inside += any(b["category_id"] in strong and b["bbox"][0] <= x and b["bbox"][1] <= y and
                          x + w <= b["bbox"][0] + b["bbox"][2] and y + h <= b["bbox"][1] + b["bbox"][3]
                          for b in anns)
    assert inside / weak_total > 0.2  # many weak objects sit inside strong boxes
    amb, rest = ambiguous_ann_ids(coco, coco.getImgIds())
    assert 0.05 < len(amb) / (len(amb) + len(rest)) < 0.5
    assert len(coco.dataset["annotations"]) / 40 > 3  # crowded images
    assert box_iou_xywh(np.array([[0, 0, 2, 2], [1, 0, 2, 2]], float))[0, 1] == pytest.approx(1 / 3)


def test_weak_classes_with_boxes_only(generated, tmp_path):
    data = json.load(open(generated["train_ann"]))
    strong = {c["id"] for c in data["categories"] if c["name"] in STRONG_CLASSES}
    for a in data["annotations"]:
        if a["category_id"] not in strong:
            del a["segmentation"]
    path = tmp_path / "boxes_only.json"
    path.write_text(json.dumps(data))
    ds = CocoInstances(ann_file=str(path), image_dir=generated["train_images"], split=",".join(STRONG_CLASSES))
    n_weak = 0
    for i in range(len(ds)):
        _, t = ds[i]
        strong_rows = np.array([ds.contiguous_to_id[int(c)] in strong for c in t["labels"]], dtype=bool)
        assert t["has_mask"].numpy().tolist() == strong_rows.tolist()
        n_weak += int((~strong_rows).sum())
    assert n_weak > 0
