"""Tests that kill mutants of the evaluation's subsets (opmask_fast/evaluation/metrics.py, coco_eval.py) which
survived the other tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s):
``file:line  cosmic-ray operator``, and the mutated code. The dataset and the fake model are test_eval_subsets'."""

import json
import math

import pytest

from opmask_fast.evaluation.metrics import compute_metrics, evaluate_model, format_table, log_evaluation, write_metrics

from test_eval_subsets import STRONG, WEAK, PolicyModel, _all, dataset  # noqa: F401 (dataset: the fixture)


def _nan_as_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_as_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_as_none(v) for v in x]
    return x


def test_evaluate_model_writes_its_files_into_an_existing_folder(dataset, tmp_path):  # noqa: F811
    """metrics.py:115 ReplaceTrueWithFalse: ``os.makedirs(output_dir, exist_ok=True)`` -> ``exist_ok=False`` (an
    output folder that exists, e.g. the run's own, would raise), and metrics.py:126 ReplaceBinaryOperator_Add_Mul:
    ``tmp = path + ".tmp"`` -> ``path * ".tmp"`` (metrics.json would never be written)."""
    model = PolicyModel(dataset, lambda cat, amb: _all(True))
    m = evaluate_model(model, dataset, strong_ids=STRONG, output_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.json", "prior_predictions.json"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == _nan_as_none(m)
    assert len(json.loads((tmp_path / "predictions.json").read_text())) == m["num_detections"]
    # and a folder that does not exist yet is made
    evaluate_model(model, dataset, strong_ids=STRONG, output_dir=str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b" / "metrics.json").is_file()


def test_write_metrics_is_strict_json_and_leaves_no_temporary(tmp_path):
    """metrics.py:126 ReplaceBinaryOperator_Add_Mul (``path + ".tmp"`` -> ``path * ".tmp"``): write_metrics writes
    NaN as null through a temporary that it renames."""
    path = tmp_path / "metrics.json"
    write_metrics({"a": 1.5, "b": math.nan, "c": {"x": math.nan}}, str(path))
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": {"x": None}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_format_table_prints_finite_numbers_and_dashes_otherwise():
    """metrics.py:142 ReplaceAndWithOr: ``isinstance(v, float) and not math.isfinite(v)`` -> ``... or ...`` (every
    float would print as a dash)."""
    table = format_table({"mask_AP_weak": 12.34, "mask_AP_strong": 56.78, "box_AP_weak": math.nan, "bbox_AP": 40,
                          "mask_AP": math.inf, "seconds_per_image": 0.125})
    lines = table.splitlines()
    assert lines[0].split()[-3:] == ["12.3", "/", "56.8"]
    assert lines[1].endswith(" -   /   -  ")  # NaN and a missing key
    assert lines[5].split()[-3:] == ["-", "/", "40.0"]  # inf is a dash, an int a number
    assert lines[6].split()[-1] == "0.1250"


def test_log_evaluation_logs_only_numeric_scalars(tmp_path):
    """metrics.py:152 ReplaceAndWithOr: ``isinstance(v, (int, float)) and not isinstance(v, bool)`` -> ``or`` (the
    metrics log would get the per-class dicts, the class lists and the bools too)."""
    path = tmp_path / "metrics.jsonl"
    log_evaluation(str(path), 7, {"mask_AP": 12.5, "num_images": 3, "prior_AP": math.nan, "flag": True,
                                  "mask_AP_per_class": {"a": 1.0}, "strong_categories": ["a"]})
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["iteration"] == 7 and record["eval"] == {"mask_AP": 12.5, "num_images": 3, "prior_AP": None}


def test_compute_metrics_takes_the_class_groups_by_keyword_only(dataset):  # noqa: F811
    """metrics.py:57 ReplaceBinaryOperator_Mul_Div: the keyword-only marker ``*, strong_ids, weak_ids`` -> the
    positional-only marker ``/, strong_ids, weak_ids``: the two groups, given by position, could be swapped silently."""
    with pytest.raises(TypeError):
        compute_metrics(dataset, {"image_ids": [], "results": [], "prior_results": []}, None, STRONG, WEAK)


def test_subset_ap_reads_100_detections_per_image():
    """coco_eval.py:85 ReplaceUnaryOperator_USub_UAdd: ``precision[:, :, k, 0, -1]`` -> ``[..., +1]`` (maxDets 10
    instead of 100: an image with more than 10 objects would lose the recall of the rest). 12 objects in one image,
    each found exactly: AP 100 at 100 detections, about 83 at 10."""
    from pycocotools.coco import COCO

    from opmask_fast.evaluation.coco_eval import evaluate, subset_ap

    boxes = [[5.0 + 20 * (i % 4), 5.0 + 20 * (i // 4), 10.0, 10.0] for i in range(12)]
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 100, "width": 100}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 100.0,
                                   "iscrowd": 0} for i, b in enumerate(boxes)]}
    gt.createIndex()
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - 0.01 * i} for i, b in enumerate(boxes)]
    ap = subset_ap(evaluate(gt, results, "bbox", image_ids=[1]))
    assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)


def _coco(annotations, size=64):
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": size, "width": size}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": annotations}
    gt.createIndex()
    return gt


def _rle(x, y, w, h, size=64):
    import numpy as np
    from pycocotools import mask as mask_utils

    m = np.zeros((size, size), np.uint8)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def test_a_box_only_ground_truth_counts_for_box_ap_and_is_a_crowd_region_for_mask_ap():
    """coco_eval.py:35 ReplaceComparisonOperator_Eq_NotEq / Eq_Gt: ``1 if self.params.iouType == "segm" else
    g["box_only_iscrowd"]`` -> ``!=`` / ``>``. A box-only GT (its mask was unusable; data/coco.py gives it its box as
    polygon) is a real GT for box AP (missed here: AP 50) and, for mask AP, a region where a detection is neither a
    hit nor a false positive (a poor mask inside it leaves mask AP at 100)."""
    from opmask_fast.evaluation.coco_eval import evaluate, subset_ap

    a = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": _rle(2, 2, 20, 20)}
    b = {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 30, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": [[30, 30, 50, 30, 50, 50, 30, 50]], "box_only": True, "box_only_iscrowd": 0}
    gt = _coco([a, b])
    boxes = [{"image_id": 1, "category_id": 1, "bbox": [2.0, 2.0, 20.0, 20.0], "score": 0.9}]
    assert subset_ap(evaluate(gt, boxes, "bbox", image_ids=[1]))["AP"] == pytest.approx(50.0, abs=1.0)
    masks = [{"image_id": 1, "category_id": 1, "segmentation": _rle(2, 2, 20, 20), "score": 0.9},
             {"image_id": 1, "category_id": 1, "segmentation": _rle(30, 30, 10, 20), "score": 0.5}]
    assert subset_ap(evaluate(gt, masks, "segm", image_ids=[1]))["AP"] == pytest.approx(100.0)


def test_evaluate_takes_the_images_by_keyword_only():
    """coco_eval.py:39 ReplaceBinaryOperator_Mul_Div: the keyword-only marker ``*, image_ids`` -> the positional-only
    marker ``/, image_ids``."""
    from opmask_fast.evaluation.coco_eval import evaluate

    with pytest.raises(TypeError):
        evaluate(_coco([]), [], "bbox", [1])


def test_two_empty_boxes_do_not_overlap():
    """coco_eval.py:108 NumberReplacer: ``np.where(union > 0, ..., 0.0)`` -> ``1.0`` (two zero-area boxes at the same
    place would have IoU 1 and make each other "ambiguous")."""
    import numpy as np

    from opmask_fast.evaluation.coco_eval import box_iou_xywh

    iou = box_iou_xywh(np.array([[5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 4.0, 4.0]]))
    assert np.array_equal(iou[:2, :2], np.zeros((2, 2))) and iou[2, 2] == 1.0


def test_ground_truth_without_an_iscrowd_key_is_not_a_crowd():
    """coco_eval.py:119 NumberReplacer: ``a.get("iscrowd", 0)`` -> ``a.get("iscrowd", 1)`` (annotations without the
    key would all be dropped from the ambiguous / unambiguous split)."""
    from opmask_fast.evaluation.coco_eval import ambiguous_ann_ids

    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 60], "iscrowd": 1}]
    assert ambiguous_ann_ids(_coco(anns), [1]) == ({1, 2}, {3})


def test_evaluate_model_takes_its_options_by_keyword_only():
    """metrics.py:96 ReplaceBinaryOperator_Mul_Div: ``def evaluate_model(model, dataset, *, strong_ids, ...)`` -> ``/``
    (the class groups and the device would be accepted positionally)."""
    import inspect

    params = inspect.signature(evaluate_model).parameters
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("strong_ids", "device", "static"))


def test_box_iou_of_the_ambiguity_split_matches_a_plain_definition():
    """coco_eval.py:103 / :104 NumberReplacer: the overlap clipped at 1 instead of 0 (disjoint boxes would overlap),
    :108 NumberReplacer: ``union > 0`` -> ``union > 1`` and ``np.maximum(union, 1e-12)`` -> ``1.000000000001`` (boxes
    smaller than a pixel, as a downscaled dataset has, would get IoU 0 or a wrong one). Boxes: sub-pixel, disjoint,
    touching, nested, zero-area, random."""
    import numpy as np

    from opmask_fast.evaluation.coco_eval import box_iou_xywh

    def plain(a, b):
        iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        union = a[2] * a[3] + b[2] * b[3] - iw * ih
        return iw * ih / union if union > 0 else 0.0

    rng = np.random.default_rng(0)
    boxes = np.concatenate([
        np.array([[0.0, 0.0, 0.5, 0.4], [0.1, 0.1, 0.3, 0.2], [5.0, 5.0, 2.0, 2.0], [7.0, 5.0, 2.0, 2.0],
                  [5.5, 5.5, 1.0, 1.0], [3.0, 3.0, 0.0, 2.0]]),
        np.column_stack([rng.uniform(0, 4, (10, 2)), rng.uniform(0.05, 3, (10, 2))]),
    ])
    got = box_iou_xywh(boxes)
    want = np.array([[plain(a, b) for b in boxes] for a in boxes])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[0, 1] > 0.2 and got[2, 3] == 0.0  # a sub-pixel pair overlaps; touching boxes do not
