"""The paper's Figure 3 statistics: class overlap on a hand-made COCO file, the regression against a closed-form
t-test, pooling of complementary splits, relative improvements, and label placement."""

import json
import math
import os

import numpy as np
import pytest

from opmask_fast.data.coco import load_coco
from opmask_fast.analysis.label_placement import around_box, around_point, place_labels
from opmask_fast.analysis.figure3 import class_overlap, format_p, pool_weak_ap, regress, relative_improvements


@pytest.fixture
def hand_made(tmp_path):
    """Known IoUs: A-B 1/3 (B covers half of A and as much outside), C touches nothing, D and E coincide; a crowd
    box and a lone box."""
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}, {"id": 4, "name": "unused"}]
    images = [{"id": i, "file_name": f"{i}.png", "height": 50, "width": 50} for i in (1, 2, 3)]
    boxes = [(1, 1, [0, 0, 10, 10], 0), (1, 2, [5, 0, 10, 10], 0), (1, 2, [20, 20, 10, 10], 0),  # A, B, C
             (2, 1, [0, 0, 10, 10], 0), (2, 3, [0, 0, 10, 10], 0), (2, 3, [0, 0, 8, 8], 1),  # D, E, crowd
             (3, 3, [1, 1, 5, 5], 0)]  # G alone
    anns = [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd,
             "segmentation": []} for k, (im, c, b, crowd) in enumerate(boxes)]
    path = tmp_path / "hand.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def test_class_overlap_hand_made(hand_made):
    ov = class_overlap(load_coco(hand_made))
    assert list(ov) == ["a", "b", "c", "unused"]
    # a: pairs A-B (1/3), A-C (0), D-E (1)
    assert ov["a"].num_pairs == 3 and ov["a"].num_boxes == 2
    assert math.isclose(ov["a"].mean_iou, (1 / 3 + 0 + 1) / 3)
    # b: B-A (1/3), B-C (0), C-A (0), C-B (0)
    assert ov["b"].num_pairs == 4 and math.isclose(ov["b"].mean_iou, (1 / 3) / 4)
    # c: E-D (1) only: the crowd box is no instance, G is alone in its image
    assert ov["c"].num_pairs == 1 and ov["c"].num_boxes == 2 and math.isclose(ov["c"].mean_iou, 1.0)
    assert ov["unused"].num_pairs == 0 and math.isnan(ov["unused"].mean_iou)


def _t3_two_sided_p(t: float) -> float:
    """Closed-form CDF of Student's t with 3 degrees of freedom: an oracle independent of scipy."""
    u = t / math.sqrt(3)
    cdf = 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi
    return 2 * (1 - cdf)


def test_regression_known_values():
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    reg = regress(x, y, min_points=5)
    # By hand: mean x 3, mean y 4; Sxy 6, Sxx 10, Syy 6 -> slope 0.6, intercept 2.2, r = sqrt(0.6).
    assert math.isclose(reg.slope, 0.6) and math.isclose(reg.intercept, 2.2)
    r = math.sqrt(0.6)
    assert math.isclose(reg.r, r)
    t = r * math.sqrt(3 / (1 - r * r))
    assert math.isclose(reg.p, _t3_two_sided_p(t), rel_tol=1e-9)
    assert math.isclose(reg.p, 0.124027, abs_tol=1e-6)
    assert reg.meaningful and "p = .124" in reg.describe()


def test_regression_negative_slope_and_format():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, 80)
    y = 40 - 100 * x + rng.normal(0, 1, 80)
    reg = regress(x, y)
    assert reg.slope < -90 and reg.r < -0.9 and reg.p < 1e-10
    assert format_p(reg.p) == "p < .001" and format_p(0.003) == "p = .003" and format_p(0.189) == "p = .189"


def test_regression_not_meaningful():
    few = regress([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 5])
    assert not few.meaningful and few.slope is None and few.p is None
    assert few.describe() == "regression not meaningful: 4 classes, fewer than 5"
    assert "same mask AP" in regress([0.1, 0.2, 0.3, 0.4, 0.5], [0.0] * 5).reason
    assert "same mean IoU" in regress([0.2] * 5, [1, 2, 3, 4, 5]).reason
    # NaN pairs (a class without pairs) are dropped before counting
    assert regress([0.1, 0.2, 0.3, 0.4, math.nan], [1, 2, 3, 4, 5]).n == 4
    with pytest.raises(ValueError, match="same length"):
        regress([1, 2], [1, 2, 3])


def test_pool_complementary_splits_and_seeds():
    run_a = {"weak_categories": ["x", "y"], "mask_AP_per_class": {"x": 10.0, "y": None, "z": 50.0}}
    run_b = {"weak_categories": ["z"], "mask_AP_per_class": {"x": 90.0, "y": 70.0, "z": 5.0}}
    run_a_seed1 = {"weak_categories": ["x", "y"], "mask_AP_per_class": {"x": 20.0, "y": 4.0, "z": 60.0}}
    pooled = pool_weak_ap([run_a, run_b, run_a_seed1])
    # x: weak in both seeds of split a (mean); y: null in one seed; z: only from run b where it is weak
    assert pooled == {"x": 15.0, "y": 4.0, "z": 5.0}


def test_relative_improvements():
    base = {"person": 0.99, "cat": 3.77, "dog": 20.0, "car": 10.0, "zero": 0.0}
    new = {"person": 22.72, "cat": 60.63, "dog": 21.0, "car": 9.0, "zero": 2.0}
    rows = relative_improvements(base, new, top=3)
    assert [r[0] for r in rows] == ["person", "cat", "zero"]  # car got worse and is not listed
    assert math.isclose(rows[0][3], (22.72 - 0.99) / 1.0)  # base below the 1-point floor
    assert math.isclose(rows[1][3], (60.63 - 3.77) / 3.77)
    # a gain that prints as no change (0.0 -> 0.0) is not an improvement; one that prints (0.0 -> 0.1) is
    assert relative_improvements({"a": 0.0, "b": 0.0}, {"a": 0.03, "b": 0.06}) == [("b", 0.0, 0.06, 0.06)]


def _overlaps(rects):
    return [(i, j) for i in range(len(rects)) for j in range(i + 1, len(rects))
            if min(rects[i][2], rects[j][2]) > max(rects[i][0], rects[j][0])
            and min(rects[i][3], rects[j][3]) > max(rects[i][1], rects[j][1])]


def test_labels_avoid_each_other():
    # 12 labels naming points packed closer than a label's size, in a roomy area
    pts = [(100 + 3 * i, 100 + 2 * (i % 3)) for i in range(12)]
    chosen = place_labels([around_point(x, y, 40, 10) for x, y in pts], bounds=(0, 0, 300, 300))
    assert not _overlaps(chosen)
    for (x, y), r in zip(pts, chosen):
        assert not (r[0] < x < r[2] and r[1] < y < r[3])  # no label hides its own point
        assert r[0] >= 0 and r[1] >= 0 and r[2] <= 300 and r[3] <= 300
    # boxes sharing a corner: the labels stack instead of covering each other
    boxes = [(10, 50, 60, 90), (10, 50, 70, 95), (12, 52, 50, 80)]
    chosen = place_labels([around_box(b, 30, 8) for b in boxes], bounds=(0, 0, 128, 128))
    assert not _overlaps(chosen)
    with pytest.raises(ValueError, match="candidate"):
        place_labels([[]])


TINY_COCO_TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                               "tiny_coco", "annotations", "instances_train2017.json")


@pytest.mark.skipif(not os.path.isfile(TINY_COCO_TRAIN), reason="../shared/data/tiny_coco is not present")
def test_class_overlap_on_real_coco_matches_a_plain_loop():
    data = json.load(open(TINY_COCO_TRAIN))
    ov = class_overlap(load_coco(TINY_COCO_TRAIN))
    by_image = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    sums, pairs = {}, {}
    for anns in by_image.values():
        for a in anns:
            for b in anns:
                if a is b:
                    continue
                (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
                iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
                ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
                union = aw * ah + bw * bh - iw * ih
                c = a["category_id"]
                sums[c] = sums.get(c, 0.0) + (iw * ih / union if union > 0 else 0.0)
                pairs[c] = pairs.get(c, 0) + 1
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert len(ov) == 80 and sum(1 for o in ov.values() if o.num_pairs) == len(pairs) > 30
    for c, n in pairs.items():
        assert ov[names[c]].num_pairs == n and math.isclose(ov[names[c]].mean_iou, sums[c] / n, rel_tol=1e-9)
