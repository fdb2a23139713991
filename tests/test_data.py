"""COCO loading, splits, transforms and batching (tiny handmade files; tiny_coco when present)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from opmask_fast.data import (CocoInstances, GroupedBatchSampler, ResizeFlip, TrainingSampler, VOC_CATEGORY_IDS,
                              aspect_ratio_groups, collate, default_num_workers, hflip, inference_loader, resize,
                              resized_shape, resolve_split, train_loader)

TINY_COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tiny_coco")
needs_tiny_coco = pytest.mark.skipif(not os.path.isdir(TINY_COCO), reason="../shared/data/tiny_coco is absent")

CATS = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 10, "name": "traffic light"}]


def _write(tmp_path, anns, images=None, cats=CATS):
    images = images or [{"id": 7, "file_name": "a.png", "height": 40, "width": 60},
                        {"id": 9, "file_name": "b.png", "height": 40, "width": 60}]
    (tmp_path / "img").mkdir(exist_ok=True)
    for im in images:
        Image.fromarray(np.full((im["height"], im["width"], 3), 100, np.uint8)).save(tmp_path / "img" / im["file_name"])
    full = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(anns)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": full, "categories": cats}))
    return str(path), str(tmp_path / "img")


def _rle(mask):
    from pycocotools import mask as mu
    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


@pytest.fixture
def handmade(tmp_path):
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 10:30] = 1
    anns = [
        # two-part polygon of a person
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 20],
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10], [20, 10, 30, 10, 30, 20, 20, 20]]},
        # compressed RLE of a car
        {"image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10], "segmentation": _rle(m)},
        # crowd region (skipped in training)
        {"image_id": 7, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1, "segmentation": _rle(m)},
        # degenerate box (zero width): dropped and counted
        {"image_id": 7, "category_id": 1, "bbox": [5, 5, 0, 8], "segmentation": [[5, 5, 5, 13, 5, 13]]},
        # weak class with a box only
        {"image_id": 7, "category_id": 10, "bbox": [40, 20, 10, 10]},
    ]
    return _write(tmp_path, anns)


def test_loading_polygons_rle_crowd_degenerate(handmade):
    ann, img = handmade
    ds = CocoInstances(ann_file=ann, image_dir=img, split="person,car")
    assert len(ds) == 2  # image b has no annotation and is kept for evaluation
    assert ds.num_degenerate == 1
    assert ds.category_ids == [1, 3, 10] and ds.category_names == ["person", "car", "traffic light"]
    assert ds.id_to_contiguous == {1: 0, 3: 1, 10: 2} and ds.contiguous_to_id[2] == 10
    image, t = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32 and float(image.max()) == 100
    assert t["labels"].tolist() == [0, 1, 2]
    assert torch.equal(t["boxes"][2], torch.tensor([40.0, 20, 50, 30]))
    assert t["has_mask"].tolist() == [True, True, False]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (3, 40, 60)
    assert int(t["masks"][0].sum()) > 150 and t["masks"][0, 15, 25] == 1 and t["masks"][0, 15, 5] == 0  # both parts
    assert int(t["masks"][1].sum()) == 200
    assert int(t["masks"][2].sum()) == 0
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 40, 60)
    assert len(CocoInstances(ann_file=ann, image_dir=img, filter_empty=True)) == 1


def test_weak_masks_are_never_decoded(handmade, monkeypatch):
    import opmask_fast.data.coco as coco_mod

    ann, img = handmade
    ds = CocoInstances(ann_file=ann, image_dir=img, split="person")  # car becomes weak although it has an RLE
    seen = []
    real = coco_mod.decode_segmentation
    monkeypatch.setattr(coco_mod, "decode_segmentation", lambda s, h, w: seen.append(s) or real(s, h, w))
    _, t = ds[0]
    assert t["has_mask"].tolist() == [True, False, False]
    assert len(seen) == 1 and isinstance(seen[0], list)  # only the person polygon
    assert int(t["masks"][1].sum()) == 0


def test_clear_errors(tmp_path, handmade):
    ann, img = handmade
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoInstances(ann_file=str(tmp_path / "nope.json"), image_dir=img)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoInstances(ann_file=str(bad), image_dir=img)
    bad.write_text('{"foo": 1}')
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoInstances(ann_file=str(bad), image_dir=img)
    with pytest.raises(ValueError, match="unknown categories in split: \\['dog'\\]"):
        CocoInstances(ann_file=ann, image_dir=img, split="person,dog")
    os.remove(os.path.join(img, "b.png"))
    with pytest.raises(FileNotFoundError, match="1 of 2 images .* missing .*b.png"):
        CocoInstances(ann_file=ann, image_dir=img)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoInstances(ann_file=ann, image_dir=str(tmp_path / "none"))


def test_splits():
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 91) if i not in (12, 26, 29, 30)]
    voc = resolve_split("voc", cats)
    assert voc == set(VOC_CATEGORY_IDS) and len(voc) == 20
    nonvoc = resolve_split("nonvoc", cats)
    assert len(nonvoc) == 66 and not voc & nonvoc
    assert resolve_split("all", cats) == {c["id"] for c in cats}
    v40 = resolve_split("voc40", cats, seed=1)
    assert len(v40) == 40 and voc <= v40 and v40 == resolve_split("voc40", cats, seed=1)
    assert v40 != resolve_split("voc40", cats, seed=2)
    assert resolve_split("c1, 5", cats) == {1, 5}
    assert resolve_split(["C3", 7], cats) == {3, 7}  # names are case-insensitive, ids may be ints
    with pytest.raises(ValueError, match="VOC ids"):
        resolve_split("voc", [{"id": 100, "name": "x"}])
    with pytest.raises(ValueError, match="unknown categories"):
        resolve_split("c1,12", cats)


def test_resize_and_flip_keep_targets_consistent():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)
    image = torch.zeros((3, 40, 60))
    image[:, 5:15, 10:30] = 255
    mask = (image[0] > 0).to(torch.uint8)[None]
    target = {"boxes": torch.tensor([[10.0, 5, 30, 15]]), "masks": mask}
    big, t = resize(image, target, (80, 120))
    assert torch.equal(t["boxes"], torch.tensor([[20.0, 10, 60, 30]]))
    ys, xs = t["masks"][0].nonzero(as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (20, 60, 10, 30)
    flipped, f = hflip(big, t)
    assert torch.equal(f["boxes"], torch.tensor([[60.0, 10, 100, 30]]))
    ys, xs = f["masks"][0].nonzero(as_tuple=True)
    assert (xs.min(), xs.max() + 1) == (60, 100)
    assert torch.equal(flipped[0] > 127.5, f["masks"][0].bool())


def test_augmentation_is_a_function_of_the_seed(handmade):
    ann, img = handmade
    ds = CocoInstances(ann_file=ann, image_dir=img, transform=ResizeFlip(short_sides=(20, 30, 40), max_side=100,
                                                                         flip_prob=0.5))
    shapes = {ds[(0, s)][0].shape for s in range(20)}
    assert len(shapes) == 3
    a, b = ds[(0, 123)], ds[(0, 123)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_training_sampler_is_deterministic_sharded_and_resumable():
    full = list(__import__("itertools").islice(iter(TrainingSampler(size=7, seed=3)), 30))
    assert sorted(i for i, _ in full[:7]) == list(range(7)) and sorted(i for i, _ in full[7:14]) == list(range(7))
    assert len({s for _, s in full}) == 30  # every position has its own augmentation seed
    r0 = list(__import__("itertools").islice(iter(TrainingSampler(size=7, seed=3, rank=0, world_size=2)), 15))
    r1 = list(__import__("itertools").islice(iter(TrainingSampler(size=7, seed=3, rank=1, world_size=2)), 15))
    assert r0 == full[0::2] and r1 == full[1::2]
    resumed = list(__import__("itertools").islice(iter(TrainingSampler(size=7, seed=3, start=11)), 19))
    assert resumed == full[11:]
    with pytest.raises(ValueError, match="empty"):
        TrainingSampler(size=0, seed=0)


def test_aspect_ratio_grouping_is_deterministic_and_resumable():
    import itertools

    groups = [0, 1, 1, 0, 0, 1, 0]
    stream = list(itertools.islice(iter(TrainingSampler(size=7, seed=4, rank=1, world_size=2)), 200))
    grouped = lambda start: GroupedBatchSampler(TrainingSampler(size=7, seed=4, rank=1, world_size=2),  # noqa: E731
                                                group_ids=groups, batch_size=3, start_batch=start)
    batches = list(itertools.islice(iter(grouped(0)), 40))
    assert all(len(b) == 3 and len({groups[i] for i, _ in b}) == 1 for b in batches)
    # Each group's items come in stream order, none skipped.
    for g in (0, 1):
        got = [item for b in batches for item in b if groups[item[0]] == g]
        assert got == [item for item in stream if groups[item[0]] == g][:len(got)]
    assert list(itertools.islice(iter(grouped(17)), 23)) == batches[17:]  # resume at batch 17
    # One group: plain consecutive batches of the stream, as without grouping.
    single = GroupedBatchSampler(TrainingSampler(size=7, seed=4, rank=1, world_size=2), group_ids=[0] * 7,
                                 batch_size=3)
    assert list(itertools.islice(iter(single), 10)) == [stream[3 * i:3 * i + 3] for i in range(10)]
    with pytest.raises(ValueError, match="group ids"):
        GroupedBatchSampler(TrainingSampler(size=7, seed=4), group_ids=[0] * 6, batch_size=3)
    with pytest.raises(TypeError, match="records"):
        aspect_ratio_groups([1, 2, 3])


def test_default_num_workers():
    assert default_num_workers("cpu") == 0
    assert 1 <= default_num_workers("cuda") <= 4
    assert default_num_workers("cuda", processes_per_machine=10**6) == 1


def test_batching_images_of_different_sizes(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
              {"id": 2, "file_name": "b.png", "height": 50, "width": 30}]
    anns = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]},
            {"image_id": 2, "category_id": 3, "bbox": [2, 2, 10, 10], "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}]
    ann, img = _write(tmp_path, anns, images)
    ds = CocoInstances(ann_file=ann, image_dir=img)
    images_, targets = next(train_loader(ds, batch_size=2, seed=0, aspect_ratio_grouping=False))
    assert sorted(tuple(i.shape) for i in images_) == [(3, 40, 60), (3, 50, 30)]
    assert all(t["masks"].shape[-2:] == i.shape[-2:] for i, t in zip(images_, targets))
    batches = list(inference_loader(ds, batch_size=2))
    assert len(batches) == 1 and [t["image_id"] for t in batches[0][1]] == [1, 2]
    assert aspect_ratio_groups(ds) == [0, 1]  # landscape, portrait: with grouping never in one batch
    loader = train_loader(ds, batch_size=2, seed=0, num_workers=1)
    for _ in range(4):
        images_, _ = next(loader)
        assert len({tuple(i.shape) for i in images_}) == 1
    assert collate([(1, "a"), (2, "b")]) == ([1, 2], ["a", "b"])


@needs_tiny_coco
def test_tiny_coco_voc_split():
    ds = CocoInstances(ann_file=os.path.join(TINY_COCO, "annotations", "instances_train2017.json"),
                       image_dir=os.path.join(TINY_COCO, "train2017"), split="voc",
                       transform=ResizeFlip(short_sides=(200,), max_side=333))
    assert len(ds.category_ids) == 80 and ds.strong_ids == set(VOC_CATEGORY_IDS)
    n_strong = n_weak = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert min(image.shape[-2:]) == 200 or max(image.shape[-2:]) == 333
        assert t["masks"].shape == (len(t["labels"]), *image.shape[-2:])
        strong = torch.tensor([ds.contiguous_to_id[int(c)] in ds.strong_ids for c in t["labels"]], dtype=torch.bool)
        assert torch.equal(t["has_mask"], strong)
        assert t["masks"][~strong].sum() == 0
        # strong masks lie (nearly) inside their boxes and are not empty unless the object is tiny
        n_strong += int(strong.sum())
        n_weak += int((~strong).sum())
    assert n_strong == 222 and n_weak == 243  # the crowd regions are skipped
