"""Real data, real architecture: the R-50 COCO preset with its backbone weights from a file, three training iterations
on ../shared/data/tiny_coco at a reduced image size and proposal/RoI count, then evaluation and prediction.

Random ResNet-50 weights stand in for ImageNet ones (nothing is downloaded); the point is the path a COCO user takes.
About 35-50 s on one CPU thread.
"""

import json
import os

import pytest
import torch
import torchvision

from opmask_fast.config import IMAGENET_RGB_MEAN
from opmask_fast.training.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_COCO = os.path.join(ROOT, "..", "shared", "data", "tiny_coco")
pytestmark = pytest.mark.skipif(not os.path.isdir(TINY_COCO), reason="../shared/data/tiny_coco is absent")

# The preset as it is, at 256 px with fewer proposals, RoIs and detections so that one CPU thread keeps up.
SMALL = ["input.min_size_train=256", "input.min_size_test=256", "input.max_size=384", "rpn.pre_nms_topk_train=200",
         "rpn.post_nms_topk_train=50", "rpn.pre_nms_topk_test=100", "rpn.post_nms_topk_test=20",
         "roi_heads.batch_size_per_image=16", "roi_heads.detections_per_image=10"]


def test_r50_preset_with_weights_file_trains_and_evaluates_on_tiny_coco(tmp_path, caplog):
    from opmask_fast import Predictor, evaluate, train

    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    weights = str(tmp_path / "resnet50.pth")
    torch.save(sd, weights)
    ann = os.path.join(TINY_COCO, "annotations")
    out = str(tmp_path / "r50")
    with caplog.at_level("INFO"):
        metrics = train.main([
            "--preset", "opmask_r50_coco", "--weights", weights,
            "--train-ann", os.path.join(ann, "instances_train2017.json"),
            "--train-images", os.path.join(TINY_COCO, "train2017"),
            "--val-ann", os.path.join(ann, "instances_val2017.json"), "--val-images", os.path.join(TINY_COCO, "val2017"),
            "--split", "voc", "--iters", "3", "--batch-size", "2", "--log-period", "1", "--eval-max-images", "2",
            "--quiet", "--output-dir", out, *[a for s in SMALL for a in ("--set", s)]])
    assert "torchvision ResNet backbone file" in caplog.text and "scaled with --batch-size" in caplog.text

    ckpt = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    meta = ckpt["meta"]
    assert ckpt["iteration"] == 3
    mc, tc = meta["model_config"], meta["train_config"]
    assert mc["input_format"] == "RGB" and tuple(mc["pixel_mean"]) == IMAGENET_RGB_MEAN
    assert mc["backbone"]["stride_in_1x1"] is False and tuple(mc["input"]["min_size_train"]) == (256,)
    # the paper's recipe from the preset, the LR scaled to batch 2, the step and warm-up moved by --iters
    assert tc["base_lr"] == pytest.approx(0.02 * 2 / 16) and tc["batch_size"] == 2
    assert (tuple(tc["steps"]), tc["warmup_iters"], tc["clip_value"], tc["weight_decay"]) == ((2,), 1, 1.0, 1e-4)
    # the weights arrived: the frozen stem and res2 are the file's exactly; res5 trained away from it
    model = ckpt["model"]
    for k in ("conv1.weight", "layer1.0.conv2.weight", "layer1.2.bn3.running_var"):
        assert torch.equal(model["backbone.bottom_up." + k], sd[k]), k
    assert not torch.equal(model["backbone.bottom_up.layer4.0.conv2.weight"], sd["layer4.0.conv2.weight"])
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["iteration"] for l in lines if "loss" in l] == [1, 2, 3]
    assert [l["iteration"] for l in lines if "eval" in l] == [3]  # the final evaluation is logged too
    assert metrics["num_images"] == 2 and len(metrics["strong_categories"]) == 20

    # The checkpoint holds every weight: evaluation and prediction work without the ImageNet file.
    os.remove(weights)
    ev = evaluate.main(["--checkpoint", os.path.join(out, "checkpoint.pth"), "--output-dir", str(tmp_path / "ev"),
                        "--max-images", "1", "--no-oracle"])
    assert ev["num_images"] == 1
    image = os.path.join(TINY_COCO, "val2017", sorted(os.listdir(os.path.join(TINY_COCO, "val2017")))[0])
    inst = Predictor(os.path.join(out, "checkpoint.pth"), score_thresh=0.0)(image)
    h, w = inst["image_size"]
    assert inst["masks"].shape[1:] == (h, w) and max(h, w) > 384  # pasted at the image's own size
    assert len(Predictor.coco_results(inst, 1)) == inst["boxes"].shape[0] > 0
