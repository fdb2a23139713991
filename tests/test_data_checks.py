"""The annotation rule (bad box: dropped, bad mask: box-only), the file-structure checks, COCO-name splits, checkpoints."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mu

from opmask_fast.data import CocoInstances, is_coco_categories, resolve_split
from opmask_fast.data.sanitize import check_box, check_segmentation, compressed_counts
from opmask_fast.data.splits import quote_part, split_parts
from opmask_fast.training.checkpoint import CheckpointError, check_model_checkpoint, load_checkpoint
from opmask_fast.evaluation.coco_eval import evaluate, subset_ap

H, W = 40, 60
CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 10, "name": "traffic light"}]
SQUARE = [[10, 10, 20, 10, 20, 20, 10, 20]]


def _rle(mask):
    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def _write(tmp_path, anns, cats=CATS, images=None):
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    (tmp_path / "img").mkdir(exist_ok=True)
    for im in images:
        Image.fromarray(np.full((im["height"], im["width"], 3), 90, np.uint8)).save(tmp_path / "img" / im["file_name"])
    full = [{"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(anns)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": full, "categories": cats}))
    return str(path), str(tmp_path / "img")


# Each bad annotation with the reason the rule gives it (ids are positions + 1). Category 1 is strong.
BAD = [
    ({"category_id": 1, "bbox": [5, float("nan"), 10, 10], "segmentation": SQUARE}, "bbox_nonfinite"),
    ({"category_id": 1, "bbox": [5, 5, float("inf"), 10], "segmentation": SQUARE}, "bbox_nonfinite"),
    ({"category_id": 1, "bbox": [5, 5, 10**400, 10], "segmentation": SQUARE}, "bbox_nonfinite"),  # valid JSON
    ({"category_id": 1, "bbox": [5, 5, -10, 10], "segmentation": SQUARE}, "bbox_negative_size"),
    ({"category_id": 1, "bbox": [500, 5, 10, 10], "segmentation": SQUARE}, "bbox_outside_image"),
    ({"category_id": 1, "bbox": [-20, 5, 10, 10], "segmentation": SQUARE}, "bbox_outside_image"),
    ({"category_id": 1, "bbox": [5, 5, 0.5, 10], "segmentation": SQUARE}, "bbox_degenerate"),
    ({"category_id": 1, "bbox": [5, 5, 10], "segmentation": SQUARE}, "bbox_invalid"),
    ({"category_id": 1, "bbox": "5,5,10,10", "segmentation": SQUARE}, "bbox_invalid"),
    ({"category_id": 1, "segmentation": SQUARE}, "bbox_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": []}, "mask_empty"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [[1, 2, 3, 4]]}, "mask_empty"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10]}, "mask_missing"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [[1, 2, 3, 4, 5, 6, 7]]}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [[1, 2, float("nan"), 4, 5, 6]]}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [[1, 2, 10**400, 4, 5, 6]]}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": {"size": [10**400, W], "counts": [H * W]}},
     "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": {"size": [H, W], "counts": [5, 5]}}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": {"size": [W, H], "counts": [H * W]}}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": {"size": [H, W], "counts": "zz"}}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": "polygon"}, "mask_invalid"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [[100, 100, 200, 100, 200, 200]]}, "mask_zero_area"),
    ({"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": _rle(np.zeros((H, W)))}, "mask_zero_area"),
]
GOOD = [
    {"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": SQUARE},
    {"category_id": 3, "bbox": [-1, 30, 10.5, 10.9]},  # weak, box only; slightly outside the image: clipped
]


def test_rule_drops_bad_boxes_and_makes_bad_masks_box_only(tmp_path, caplog):
    ann, img = _write(tmp_path, [a for a, _ in BAD] + GOOD)
    with caplog.at_level("WARNING"):
        ds = CocoInstances(ann_file=ann, image_dir=img, split="person")
    expected = {}
    for i, (_, reason) in enumerate(BAD):
        expected.setdefault(reason, []).append(i + 1)
    assert ds.dropped == {r: len(ids) for r, ids in sorted(expected.items())}
    assert ds.dropped_ids == expected
    assert ds.num_degenerate == sum(n for r, n in ds.dropped.items() if r.startswith("bbox_"))
    assert "bbox_nonfinite 3 (ids 1, 2, 3)" in caplog.text and "mask_empty 2 (ids 11, 12)" in caplog.text
    _, t = ds[0]
    n_box_only = sum(1 for _, r in BAD if r.startswith("mask_"))
    assert len(t["labels"]) == n_box_only + 2 and torch.isfinite(t["boxes"]).all()
    assert t["has_mask"].tolist() == [False] * n_box_only + [True, False]
    assert int(t["masks"][:n_box_only].sum()) == 0 and int(t["masks"][n_box_only].sum()) == 100
    assert t["boxes"][-1].tolist() == [0.0, 30.0, 9.5, 40.0]  # clipped within the tolerance


def test_evaluation_ground_truth_has_no_dropped_and_ignores_box_only_masks(tmp_path):
    box_only = {"category_id": 1, "bbox": [30, 20, 10, 10], "segmentation": []}
    ann, img = _write(tmp_path, [BAD[0][0], box_only, GOOD[0]])
    ds = CocoInstances(ann_file=ann, image_dir=img, split="person", masks="none")
    assert sorted(ds.coco.anns) == [2, 3] and ds.coco.anns[2]["box_only"] and "box_only" not in ds.coco.anns[3]
    assert all(math.isfinite(v) for a in ds.coco.anns.values() for v in a["bbox"])
    assert "segmentation" not in ds.records[0]["anns"][0]["ann"]  # the oracle pass skips it
    blob, square = np.zeros((H, W)), np.zeros((H, W))
    blob[22:26, 32:36] = 1  # a mask inside the box-only GT's box
    square[10:20, 10:20] = 1
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [10, 10, 10, 10], "segmentation": _rle(square)},
               {"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [30, 20, 10, 10], "segmentation": _rle(blob)}]
    # Box AP counts the box-only GT; mask AP neither rewards nor punishes the blob inside its box.
    assert subset_ap(evaluate(ds.coco, results, "bbox", image_ids=[1]))["AP50"] == pytest.approx(100.0)
    assert subset_ap(evaluate(ds.coco, results, "segm", image_ids=[1]))["AP50"] == pytest.approx(100.0)
    assert subset_ap(evaluate(ds.coco, results, "bbox", image_ids=[1]))["AP50"] == pytest.approx(100.0)  # not left as a crowd


@pytest.mark.parametrize("first_id", [1, 0, -4])
def test_an_annotation_of_id_0_is_scored_like_any_other(tmp_path, first_id):
    # COCOeval marks an unmatched ground truth with id 0: the annotation of id 0 gets a free id when loaded.
    square, other = np.zeros((H, W)), np.zeros((H, W))
    square[10:20, 10:20] = 1
    other[25:35, 30:50] = 1
    ann, img = _write(tmp_path, [{"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": _rle(square)},
                                 {"category_id": 3, "bbox": [30, 25, 20, 10], "segmentation": _rle(other)}])
    data = json.loads(open(ann).read())
    data["annotations"][0]["id"] = first_id
    open(ann, "w").write(json.dumps(data))
    ds = CocoInstances(ann_file=ann, image_dir=img, masks="none")
    assert 0 not in ds.coco.anns and len(ds.coco.anns) == 2
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [10, 10, 10, 10], "segmentation": _rle(square)},
               {"image_id": 1, "category_id": 3, "score": 0.8, "bbox": [30, 25, 20, 10], "segmentation": _rle(other)}]
    for iou_type in ("bbox", "segm"):
        assert subset_ap(evaluate(ds.coco, results, iou_type, image_ids=[1]))["AP"] == pytest.approx(100.0)


def test_polygon_parts_the_rule_drops_are_not_in_the_evaluation_ground_truth(tmp_path):
    """A mask whose first polygon part has fewer than three points is usable (the part is noise); COCOeval reads the
    format off the first part (four numbers: a box; fewer: an error), so the ground truth holds the kept parts only."""
    square = np.zeros((H, W))
    square[10:20, 10:20] = 1
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [10, 10, 10, 10], "segmentation": _rle(square)}]
    for noise in ([10, 10, 13, 10], [10, 10], []):
        ann, img = _write(tmp_path, [{"category_id": 1, "bbox": [10, 10, 10, 10], "segmentation": [noise, *SQUARE]}])
        ds = CocoInstances(ann_file=ann, image_dir=img, split="person", masks="none")
        assert ds.dropped == {} and ds.coco.anns[1]["segmentation"] == SQUARE
        assert subset_ap(evaluate(ds.coco, results, "segm", image_ids=[1]))["AP"] == pytest.approx(100.0)


def test_ids_beyond_64_bits_are_refused_and_a_remapped_id_0_is_named_as_in_the_file(tmp_path, caplog):
    # COCOeval's id arrays turn to float with an id of 2**63 or more, and lose the image or class silently.
    for key, what in (("images", "image"), ("categories", "category"), ("annotations", "annotation")):
        ann, img = _write(tmp_path, GOOD)
        data = json.loads(open(ann).read())
        data[key][-1]["id"] = 2**63 + 5
        open(ann, "w").write(json.dumps(data))
        with pytest.raises(ValueError, match=f"{what} entry #{len(data[key]) - 1} has id 9223372036854775813, "
                                             "outside the 64-bit integers"):
            CocoInstances(ann_file=ann, image_dir=img)
    ann, img = _write(tmp_path, [{"category_id": 1, "bbox": [5, 5, -10, 10], "segmentation": SQUARE}, GOOD[0]])
    data = json.loads(open(ann).read())
    data["annotations"][0]["id"] = 0
    open(ann, "w").write(json.dumps(data))
    ds = CocoInstances(ann_file=ann, image_dir=img, split="person")
    assert ds.dropped_ids == {"bbox_negative_size": [0]}


def test_sixteen_bit_grey_images_keep_their_contrast(tmp_path):
    # PIL's convert("RGB") clips a 16-bit image's values to 255 (near white); the loaders keep the top byte.
    from opmask_fast.predictor import read_image

    ann, img = _write(tmp_path, [GOOD[0]])
    grey = (np.arange(H * W, dtype=np.int64).reshape(H, W) * 65535 // (H * W - 1)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "img" / "a.png")
    with Image.open(tmp_path / "img" / "a.png") as im:
        assert im.mode in ("I;16", "I")  # as PIL opens it
    expected = np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    assert np.array_equal(read_image(tmp_path / "img" / "a.png"), expected)
    image = CocoInstances(ann_file=ann, image_dir=img, masks="none").load_image(0)
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1).float())
    assert int(image.min()) == 0 and int(image.max()) == 255


def test_weak_masks_are_not_checked_in_training(tmp_path):
    ann, img = _write(tmp_path, [{"category_id": 3, "bbox": [10, 10, 10, 10], "segmentation": []}, GOOD[0]])
    assert CocoInstances(ann_file=ann, image_dir=img, split="person").dropped == {}
    assert CocoInstances(ann_file=ann, image_dir=img, split="person", masks="none").dropped == {"mask_empty": 1}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(category_id=99), "annotation 1 has category_id 99"),
    (lambda d: d["annotations"][0].update(image_id=5), "annotation 1 has image_id 5"),
    (lambda d: d["annotations"][0].pop("image_id"), "annotation 1 has image_id None"),
    (lambda d: d["annotations"][1].update(id=1), "annotation id 1 appears more than once"),
    (lambda d: d["annotations"][0].pop("id"), "annotation entry #0 has id None"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "annotation 1 has iscrowd 2"),
    (lambda d: d["images"][0].update(height=0), "image 1 .* has height 0"),
    (lambda d: d["images"][0].update(width=10**400), r"image 1 .* has width 10{36}\.\.\.; it must be a positive"),
    (lambda d: d["images"][0].pop("file_name"), "image 1 has no file_name"),
    (lambda d: d["categories"].append({"id": 11, "name": "Car"}), "category names .* more than once"),
    (lambda d: d["categories"].append({"id": 11, "name": " car "}), "category names .* more than once"),
    (lambda d: d["categories"].clear(), "lists no categories"),
    (lambda d: d.update(annotations={}), "not a COCO instances file"),
])
def test_structure_errors_name_the_entry(tmp_path, change, message):
    ann, img = _write(tmp_path, GOOD)
    data = json.loads(open(ann).read())
    change(data)
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        CocoInstances(ann_file=ann, image_dir=img)


def test_verify_images_names_unreadable_and_resized_images(tmp_path):
    ann, img = _write(tmp_path, GOOD, images=[{"id": 1, "file_name": "a.png", "height": H, "width": W},
                                              {"id": 2, "file_name": "b.png", "height": H, "width": W}])
    ds = CocoInstances(ann_file=ann, image_dir=img)
    ds.verify_images()
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    with pytest.raises(ValueError, match=r"b.png is 60x41, .* says 60x40 \(image 2\)"):
        ds.verify_images()
    (tmp_path / "img" / "b.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*b.png \(image 2 of"):
        ds.verify_images()


def test_a_file_name_naming_a_folder_is_said_so(tmp_path):
    ann, img = _write(tmp_path, GOOD)
    data = json.loads(open(ann).read())
    data["images"].append({"id": 2, "file_name": "sub", "height": H, "width": W})
    open(ann, "w").write(json.dumps(data))
    (tmp_path / "img" / "sub").mkdir()
    with pytest.raises(ValueError, match=r"1 file_name\(s\) of .* name folders .* not images, e.g. \['sub'\]"):
        CocoInstances(ann_file=ann, image_dir=img)


def _with_orientation(array, orientation, path):
    """Saves ``array`` with the EXIF orientation tag, stored so that a viewer (applying the tag) shows ``array``."""
    stored = {1: lambda im: im, 3: lambda im: im.transpose(Image.ROTATE_180),
              6: lambda im: im.transpose(Image.ROTATE_90)}[orientation](Image.fromarray(array))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif)
    return np.asarray(stored)


def test_exif_orientation_is_applied_unless_the_annotation_gives_the_stored_size(tmp_path):
    """An image is read upright by its EXIF orientation, as detectron2 reads it and as annotation tools show it; a
    90-degree orientation whose annotation gives the stored (not the shown) size keeps the stored pixels; a size that
    fits neither is refused naming the orientation. Predictor.read_image reads it upright."""
    from opmask_fast.predictor import as_rgb_array, read_image

    shown = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},  # orientation 3: same size, turned
              {"id": 2, "file_name": "b.png", "height": H, "width": W},  # orientation 6, annotated as shown
              {"id": 3, "file_name": "c.png", "height": W, "width": H}]  # orientation 6, annotated as stored
    ann, img = _write(tmp_path, GOOD, images=images)
    _with_orientation(shown, 3, tmp_path / "img" / "a.png")
    _with_orientation(shown, 6, tmp_path / "img" / "b.png")
    stored = _with_orientation(shown, 6, tmp_path / "img" / "c.png")
    assert stored.shape == (W, H, 3)
    ds = CocoInstances(ann_file=ann, image_dir=img)
    ds.verify_images()
    for index, expected in ((0, shown), (1, shown), (2, stored)):
        assert np.array_equal(ds.load_image(index).permute(1, 2, 0).numpy().astype(np.uint8), expected), index
    assert np.array_equal(read_image(tmp_path / "img" / "b.png"), shown)
    assert np.array_equal(read_image(tmp_path / "img" / "c.png"), shown)
    with Image.open(tmp_path / "img" / "b.png") as im:  # a PIL image given to the Predictor: the same
        assert np.array_equal(as_rgb_array(im), shown)
    # The header check of a large dataset stays a header read: a PNG without EXIF is not decoded to look for it.
    from unittest import mock

    from opmask_fast.data.transforms import shown_size

    Image.fromarray(shown).save(tmp_path / "plain.png")
    with Image.open(tmp_path / "plain.png") as im, mock.patch.object(type(im), "load", side_effect=AssertionError):
        assert shown_size(im) == (W, H)
    data = json.loads(open(ann).read())
    data["images"][1].update(width=W + 1)
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=r"b.png is 40x60 \(shown 60x40 by its EXIF orientation\), .* says 61x40"):
        CocoInstances(ann_file=ann, image_dir=img).verify_images()


def test_every_orientation_and_an_exif_block_pillow_cannot_write_back(tmp_path):
    """All eight orientations are turned as Pillow's exif_transpose turns them; a JPEG whose EXIF block Pillow reads
    but cannot serialise again (XResolution stored as text: exif_transpose raised TypeError) is read upright too."""
    import struct

    from PIL import ImageOps

    from opmask_fast.data.transforms import upright
    from opmask_fast.predictor import read_image

    stored = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(tmp_path / f"o{orientation}.png", exif=exif)
        with Image.open(tmp_path / f"o{orientation}.png") as im:
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        with Image.open(tmp_path / f"o{orientation}.png") as im:
            turned = upright(im)
            assert np.array_equal(np.asarray(turned.convert("RGB")), want), orientation
            assert np.array_equal(np.asarray(upright(turned).convert("RGB")), want), orientation  # not turned twice
    ifd = struct.pack("<H", 2) + struct.pack("<HHI4s", 0x0112, 3, 1, struct.pack("<HH", 6, 0)) \
        + struct.pack("<HHI4s", 0x011A, 2, 3, b"72\0\0") + struct.pack("<I", 0)
    Image.fromarray(stored).save(tmp_path / "bad_exif.jpg", exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd,
                                 quality=100)
    with Image.open(tmp_path / "bad_exif.jpg") as im:  # Pillow 13's exif_transpose raises TypeError on it
        plain = np.asarray(im.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "bad_exif.jpg"), np.rot90(plain, -1))
    # An orientation in XMP (tiff:Orientation), which Pillow reads too: turned once, and not again.
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(stored).save(tmp_path / "xmp.jpg", xmp=xmp, quality=100)
    with Image.open(tmp_path / "xmp.jpg") as im:
        if im.getexif().get(0x0112) == 6:  # a Pillow that reads XMP orientations
            plain = np.asarray(im.convert("RGB"))
            turned = upright(im)
            assert np.array_equal(np.asarray(upright(turned).convert("RGB")), np.rot90(plain, -1))


def test_box_and_mask_checks_directly():
    assert check_box([0, 0, W + 2, H], H, W) == ((0.0, 0.0, float(W), float(H)), None)
    assert check_box([0, 0, W + 2.5, H], H, W) == (None, "bbox_outside_image")
    assert check_box([True, 0, 5, 5], H, W) == (None, "bbox_invalid")
    m = np.zeros((H, W), np.uint8)
    m[3:7, 4:9] = 1
    rle = _rle(m)
    assert compressed_counts(rle["counts"]) == _runs(m) and sum(_runs(m)) == H * W
    assert compressed_counts("\x7f") is None and compressed_counts("o") is None  # outside the alphabet, unfinished
    assert check_segmentation(rle, H, W) == (20.0, None)
    assert check_segmentation({"size": [H, W], "counts": _runs(m)}, H, W) == (20.0, None)
    assert check_segmentation(None, H, W) == (0.0, "mask_missing")
    assert check_segmentation({"size": [H, W], "counts": ""}, H, W) == (0.0, "mask_empty")
    # A vertex far outside the image would make pycocotools allocate in proportion or crash: a broken mask, box kept.
    square = [1.0, 1, 5, 1, 5, 5, 1, 5]
    assert check_segmentation([square], H, W) == (16.0, None)
    reach = 8 * max(H, W)
    assert check_segmentation([[-reach, -reach, W + reach, -reach, W + reach, H + reach]], H, W)[1] is None
    for far in ([1e9, 1e9], [-reach - 1.0, 2], [2, H + reach + 1.0], [-1e12, 3]):
        assert check_segmentation([square[:6] + far], H, W) == (0.0, "mask_invalid"), far
        assert check_segmentation([square, square[:6] + far], H, W) == (0.0, "mask_invalid"), far


def _runs(mask):
    flat = mask.flatten(order="F")
    runs, value, n = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    return runs + [n]


def test_split_of_int_ids_on_numeric_names():
    # A digits dataset: category id 1 is named "0". A checkpoint's strong ids (ints) are ids; the user's strings are
    # names first.
    digits = [{"id": i + 1, "name": str(i)} for i in range(10)]
    assert resolve_split([1, 2], digits) == {1, 2}
    assert resolve_split("0,1", digits) == {1, 2}
    assert resolve_split(["0", "1"], digits) == {1, 2}
    with pytest.raises(ValueError, match="unknown categories"):
        resolve_split([11], digits)
    # A name with outer spaces in the file is the name typed without them (the typed one is stripped too).
    spaced = [{"id": 1, "name": " circle "}, {"id": 2, "name": "dog "}, {"id": 3, "name": "cat"}]
    assert resolve_split(" circle ,dog", spaced) == {1, 2} and resolve_split(["dog "], spaced) == {2}


def test_split_names_holding_commas_and_quotes():
    """A name holding a comma is typed in double quotes, as in CSV; a quote inside a name is a plain character."""
    cats = [{"id": 1, "name": "cat, black"}, {"id": 2, "name": "cat"}, {"id": 3, "name": 'say "hi"'},
            {"id": 4, "name": "black"}]
    assert resolve_split('"cat, black",4', cats) == {1, 4}
    assert resolve_split(' "cat, black" , cat', cats) == {1, 2}
    assert resolve_split('say "hi"', cats) == {3} and resolve_split('"say ""hi""",black', cats) == {3, 4}
    assert resolve_split("cat,black", cats) == {2, 4}  # unquoted: two names
    assert split_parts(' "a,b" ,, c ') == ["a,b", "c"]
    with pytest.raises(ValueError, match="double quote is not closed"):
        resolve_split('"cat, black,4', cats)
    # Each name quoted as the split suggested by "--split is required" writes it: it gives the name back.
    for name in ("cat, black", 'say "hi"', '"quoted", comma', '"x"', "plain"):
        assert split_parts(quote_part(name)) == [name.strip()]
        assert split_parts(quote_part(name) + ",b") == [name.strip(), "b"]


def test_suggested_split_types_back_as_the_name(tmp_path):
    import shlex

    from opmask_fast.cli import UsageError
    from opmask_fast.cli.checks import choose_split

    cats = [{"id": 7, "name": 'pers,on "x"'}, {"id": 8, "name": "dog"}]
    with pytest.raises(UsageError, match="--split is required") as e:
        choose_split(None, cats, ann_file="a.json")
    typed = shlex.split(str(e.value).split("e.g. --split ", 1)[1].split(" (categories")[0])
    assert len(typed) == 1 and resolve_split(typed[0], cats) == {7}


def test_voc_split_by_coco_names():
    coco_subset = [{"id": 1, "name": "dog"}, {"id": 2, "name": "truck"}, {"id": 3, "name": "Person"}]
    assert is_coco_categories(coco_subset) and not is_coco_categories([{"id": 1, "name": "circle"}])
    assert resolve_split("voc", coco_subset) == {1, 3}  # by name: ids 1 and 3, not COCO's VOC ids
    assert resolve_split("nonvoc", coco_subset) == {2}
    with pytest.raises(ValueError, match="none of this dataset's categories is a VOC class"):
        resolve_split("voc", [{"id": 1, "name": "truck"}])


def test_checkpoint_errors_in_our_words(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (text, tmp_path / "empty.pth"):
        path.touch()
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{path.name}: it is not a checkpoint \\(") as e:
            load_checkpoint(str(path))
        assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(str(tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match=r"no 'model' and 'meta' entries \(its keys: a\)"):
        check_model_checkpoint({"a": torch.zeros(1)}, "x.pth")
    with pytest.raises(CheckpointError, match="its meta has no category_ids, category_names"):
        check_model_checkpoint({"model": {}, "meta": {"model_config": {}}}, "x.pth")


def test_weights_checkpoint_or_backbone_else_an_error(tmp_path):
    """--weights: a checkpoint (same classes) or ResNet backbone weights; a file that is neither is an error, never a
    partial load that leaves random weights."""
    import torchvision

    from opmask_fast.config import get_preset
    from opmask_fast.training.initial_weights import build_with_weights, configure_weights
    from opmask_fast.modeling.weights import WeightsMismatchError

    cfg = get_preset("opmask_r18_tiny")
    source = build_with_weights(cfg)
    torch.save({"model": source.state_dict(), "meta": {"model_config": cfg.to_dict()}}, tmp_path / "ckpt.pth")
    model = build_with_weights(*configure_weights(cfg, str(tmp_path / "ckpt.pth")))
    key = "backbone.bottom_up.layer1.0.conv1.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = build_with_weights(*configure_weights(cfg, str(tmp_path / "resnet18.pth")))
    assert torch.equal(model.state_dict()[key], resnet.state_dict()["layer1.0.conv1.weight"])
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsMismatchError, match="matches neither a ResNet backbone file"):
        configure_weights(cfg, str(tmp_path / "other.pth"))
