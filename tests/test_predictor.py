"""opmask_fast.Predictor: paths, arrays, PIL images and tensors in; instances and COCO results out."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from opmask_fast.config import get_preset

from opmask_fast.modeling import build_model
from opmask_fast.training.checkpoint import save_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORY_IDS = [3, 5, 8, 13, 21, 34]
NAMES = ["circle", "triangle", "cross", "ring", "square", "star"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny model; score threshold 0 so it returns detections (and masks) for any image."""
    cfg = get_preset("opmask_r18_tiny")
    cfg.roi_heads.score_thresh = 0.0
    cfg.roi_heads.detections_per_image = 5
    torch.manual_seed(0)
    model = build_model(cfg)
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.pth")
    save_atomic({"model": model.state_dict(), "iteration": 0,
                 "meta": {"model_config": cfg.to_dict(), "category_ids": CATEGORY_IDS, "category_names": NAMES,
                          "strong_ids": CATEGORY_IDS[:3]}}, path)
    return path


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    arr[20:60, 30:80] = (230, 40, 40)
    return arr


def test_every_input_kind_gives_the_same_instances(checkpoint, image, tmp_path):
    from opmask_fast import Predictor

    predictor = Predictor(checkpoint, device="cpu")
    path = str(tmp_path / "img.png")
    Image.fromarray(image).save(path)
    outs = [predictor(x) for x in (path, image, Image.fromarray(image), torch.from_numpy(image))]
    for out in outs[1:]:
        assert torch.equal(out["boxes"], outs[0]["boxes"]) and torch.equal(out["masks"], outs[0]["masks"])
    inst = outs[0]
    m = inst["boxes"].shape[0]
    assert m == 5 and inst["image_size"] == (90, 120)
    assert inst["masks"].shape == (m, 90, 120) and inst["masks"].dtype == torch.bool
    assert inst["priors"].shape == (m, 7, 7) and inst["scores"].shape == (m,)
    assert inst["category_ids"] == [CATEGORY_IDS[i] for i in inst["labels"].tolist()]
    assert inst["category_names"] == [NAMES[i] for i in inst["labels"].tolist()]
    assert predictor.weak_labels == {3, 4, 5}
    assert (inst["boxes"][:, 2] <= 120).all() and (inst["boxes"][:, 3] <= 90).all()  # the image's own coordinates


def test_coco_results_and_batches(checkpoint, image):
    from opmask_fast import Predictor

    predictor = Predictor(checkpoint, batch_size=2)
    small = image[:64, :80].copy()
    batch = predictor.predict([image, small, image])
    assert [b["image_size"] for b in batch] == [(90, 120), (64, 80), (90, 120)]
    results = predictor.coco_results(batch, image_ids=[7, 8, 9])
    assert len(results) == sum(b["boxes"].shape[0] for b in batch)
    first = [r for r in results if r["image_id"] == 7]
    for r, box, mask in zip(first, batch[0]["boxes"].tolist(), batch[0]["masks"]):
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
        assert isinstance(r["segmentation"]["counts"], str)
        assert np.array_equal(mask_utils.decode(r["segmentation"]), mask.numpy().astype(np.uint8))
    assert predictor.coco_results(batch[1], 8) == [r for r in results if r["image_id"] == 8]
    high = Predictor(checkpoint, score_thresh=1.0)(image)  # an untrained model scores far below 1: nothing passes
    assert high["boxes"].shape == (0, 4) and high["masks"].shape == (0, 90, 120)
    assert high["category_ids"] == [] and Predictor.coco_results(high, 1) == []


def test_bad_inputs_name_the_problem(checkpoint, image, tmp_path):
    from opmask_fast import Predictor

    predictor = Predictor(checkpoint)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\].*float32"):
        predictor(image.astype(np.float32))
    with pytest.raises(ValueError, match="a list of images"):
        predictor.predict(image)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="cannot read image .*broken.jpg"):
        predictor(str(bad))
    with pytest.raises(ValueError, match="one image id per image"):
        predictor.coco_results([predictor(image)], [1, 2])
    for bad in (float("nan"), -0.1, 2.0, "0.5", True):
        with pytest.raises(ValueError, match="score_thresh must be a number in \\[0, 1\\]"):
            Predictor(checkpoint, score_thresh=bad)
    for bad in (0, 2.5, "2", True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            Predictor(checkpoint, batch_size=bad)
    taken = Predictor(checkpoint, batch_size=torch.tensor(2), score_thresh=np.float32(0.25))  # NumPy / 0-d tensors
    assert taken.batch_size == 2 and taken.score_thresh == pytest.approx(0.25)
    for size in ((0, 0), (0, 5)):
        with pytest.raises(ValueError, match="empty image"):
            predictor(Image.new("RGB", size))
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a machine without one)
    with pytest.raises(ValueError, match=f"device '{missing}': this machine has .* usable CUDA GPU"):
        Predictor(checkpoint, device=missing)


def test_views_and_image_modes_are_taken(checkpoint, image, recwarn):
    """What a detectron2 user passes: flipped or read-only array views (BGR to RGB after OpenCV), PIL images of
    modes PIL cannot turn into RGB directly (La), and 32-bit "I" images of 8-bit or 16-bit values."""
    from opmask_fast import Predictor
    from opmask_fast.predictor import as_rgb_array

    predictor = Predictor(checkpoint)
    want = predictor(image)
    bgr = np.ascontiguousarray(image[..., ::-1])
    for view in (bgr[..., ::-1], np.broadcast_to(image, image.shape)):
        assert torch.equal(predictor(view)["boxes"], want["boxes"])
    assert not [w for w in recwarn if "writable" in str(w.message)]
    grey = np.arange(12, dtype=np.int32).reshape(3, 4) * 20
    assert np.array_equal(as_rgb_array(Image.fromarray(grey))[..., 0], grey)  # values <= 255: as they are
    assert np.array_equal(as_rgb_array(Image.fromarray(grey * 257))[..., 0], grey)  # 16-bit values: the top byte
    la = Image.new("La", (4, 3), (90, 255))
    assert as_rgb_array(la).shape == (3, 4, 3) and (as_rgb_array(la) == 90).all()


def test_import_stays_cheap():
    code = "import sys, opmask_fast; assert 'torch' not in sys.modules; print(opmask_fast.Predictor.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "Predictor", out.stderr
