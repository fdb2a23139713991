"""Tests that kill mutants of the partial-supervision split (opmask_fast/data/splits.py) which survived the other
tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s): ``file:line  cosmic-ray
operator``, and the mutated code."""

import pytest

from opmask_fast.data.splits import VOC_CATEGORY_IDS, VOC_CATEGORY_NAMES, resolve_split

# COCO 2017's 80 detection categories (instances_*2017.json), the specification the VOC ids are read against.
COCO = [(1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
        (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
        (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
        (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
        (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
        (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
        (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
        (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
        (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
        (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
        (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
        (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
        (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush")]


def test_voc_ids_are_cocos_ids_of_the_voc_names():
    """splits.py:18 NumberReplacer (any of the 40: an id of ``VOC_CATEGORY_IDS`` +-1, e.g. 62 -> 61): the VOC split
    taken by COCO id on a renamed dataset must be the one taken by name on COCO's own categories."""
    coco = [{"id": i, "name": n} for i, n in COCO]
    by_name = resolve_split("voc", coco)
    assert by_name == {i for i, n in COCO if n in VOC_CATEGORY_NAMES} and len(by_name) == 20
    renamed = [{"id": i, "name": f"class {i}"} for i, _ in COCO]
    assert resolve_split("voc", renamed) == by_name
    assert tuple(sorted(by_name)) == VOC_CATEGORY_IDS
    # position by position: the i-th id is the i-th name's
    assert [dict((n, i) for i, n in COCO)[n] for n in VOC_CATEGORY_NAMES] == list(VOC_CATEGORY_IDS)


def test_the_default_voc40_draw_is_seed_0s():
    """splits.py:36 NumberReplacer: ``seed: int = 0`` -> ``-1`` (or ``1``): a caller without a seed gets the draw of
    seed 0, the default of ``--split-seed`` and of a checkpoint without ``split_seed`` (cli/preflight.py), so the
    library and the command line agree on what "voc40" is."""
    coco = [{"id": i, "name": n} for i, n in COCO]
    default = resolve_split("voc40", coco)
    assert default == resolve_split("voc40", coco, seed=0)
    assert default != resolve_split("voc40", coco, seed=-1) and default != resolve_split("voc40", coco, seed=1)


def test_the_seed_is_keyword_only():
    """splits.py:36 ReplaceBinaryOperator_Mul_Div: the keyword-only marker ``*, seed`` -> the positional-only marker
    ``/, seed``: ``resolve_split("voc40", cats, 3)`` must be refused, not read as a seed."""
    with pytest.raises(TypeError):
        resolve_split("voc40", [{"id": i, "name": n} for i, n in COCO], 3)
