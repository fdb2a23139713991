"""--weights FILE: backbone files (torchvision, detectron2 pickles) set the pixel format and reach the ResNet, whole-model
files reach every weight, anything else is an error naming what did not match."""

import os
import pickle

import pytest
import torch
import torchvision

from opmask_fast.config import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, MSRA_BGR_MEAN, get_preset
from opmask_fast.modeling import build_model
from opmask_fast.data import SyntheticSpec, ensure_synthetic
from opmask_fast.training.checkpoint import load_checkpoint, save_atomic
from opmask_fast.training.initial_weights import build_with_weights, configure_weights
from opmask_fast.modeling.weights import WeightsMismatchError, inspect_weights_file


def _resnet(depth, seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in net.modules():  # BN statistics that differ from the identity, so a skipped buffer is caught
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def _assert_backbone_equals(model, tv_state):
    ours = model.backbone.bottom_up.state_dict()
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.1.conv2.weight",
              "layer2.0.downsample.0.weight", "layer4.1.bn2.weight"):
        torch.testing.assert_close(ours[k], tv_state[k], rtol=0, atol=0, msg=k)


def test_torchvision_state_dict_reaches_the_backbone_with_rgb_input(tmp_path):
    sd = _resnet(18).state_dict()
    path = str(tmp_path / "resnet18.pth")
    torch.save(sd, path)
    cfg, wf = configure_weights(get_preset("opmask_r18_tiny"), path)
    assert (wf.kind, wf.format, wf.pixel_format) == ("backbone", "torchvision", "torchvision")
    assert cfg.input_format == "RGB" and cfg.pixel_mean == IMAGENET_RGB_MEAN and cfg.pixel_std == IMAGENET_RGB_STD
    assert cfg.backbone.stride_in_1x1 is False and cfg.backbone.weights == path
    _assert_backbone_equals(build_with_weights(cfg, wf), sd)
    # the COCO presets expect MSRA weights (BGR); a torchvision file switches them to RGB and the 3x3 stride
    cfg50, _ = configure_weights(get_preset("opmask_r50_coco"), _save_r50(tmp_path))
    assert cfg50.input_format == "RGB" and cfg50.backbone.stride_in_1x1 is False


def _save_r50(tmp_path):
    path = str(tmp_path / "resnet50.pth")
    if not os.path.exists(path):
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def _detectron2_names(sd):
    """detectron2's tools/convert-torchvision-to-d2.py renaming."""
    out = {}
    for k, v in sd.items():
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v.numpy()
    return out


@pytest.mark.parametrize("author,pixel", [("torchvision", "torchvision"), ("Caffe2", "msra"), (None, "msra")])
def test_detectron2_pickle_by_hand(tmp_path, author, pixel):
    sd = _resnet(18, seed=1).state_dict()
    data = {"model": _detectron2_names(sd), "matching_heuristics": True}
    if author:
        data["__author__"] = author
    path = str(tmp_path / "R-18.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f)
    cfg, wf = configure_weights(get_preset("baseline_r18_tiny"), path)
    assert (wf.kind, wf.format, wf.pixel_format) == ("backbone", "detectron2", pixel)
    if pixel == "msra":  # MSRA weights: BGR, std 1, stride in the 1x1 conv
        assert cfg.input_format == "BGR" and cfg.pixel_mean == MSRA_BGR_MEAN and cfg.pixel_std == (1.0, 1.0, 1.0)
        assert cfg.backbone.stride_in_1x1 is True
    else:
        assert cfg.input_format == "RGB" and cfg.backbone.stride_in_1x1 is False
    _assert_backbone_equals(build_with_weights(cfg, wf), sd)


def test_a_file_that_matches_neither_kind_is_an_error(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    with pytest.raises(WeightsMismatchError, match=r"matches neither a ResNet backbone file .* e\.g\. encoder\.weight"):
        configure_weights(get_preset("opmask_r18_tiny"), path)
    # ResNet weights of another depth: caught before the model is built, every key listed
    path34 = str(tmp_path / "resnet34.pth")
    torch.save(_resnet(34).state_dict(), path34)
    with pytest.raises(WeightsMismatchError, match=r"(?s)unexpected in file \(\d+\): .*layer1\.2\.conv1.*ResNet-18"):
        configure_weights(get_preset("opmask_r18_tiny"), path34)


def test_cli_rejects_a_bad_weights_file_before_reading_data(tmp_path, capsys):
    from opmask_fast import train

    path = str(tmp_path / "other.pth")
    torch.save({"head.weight": torch.zeros(2)}, path)
    missing = str(tmp_path / "missing.json")  # would be the error if the data were checked first
    with pytest.raises(SystemExit) as e:
        train.main(["--weights", path, "--train-ann", missing, "--train-images", str(tmp_path), "--val-ann", missing,
                    "--val-images", str(tmp_path), "--quiet", "--output-dir", str(tmp_path / "out")])
    lines = [l for l in capsys.readouterr().err.splitlines() if ": error:" in l]
    assert e.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("python -m opmask_fast.train: error: --weights: ") and "matches neither" in lines[0]
    assert "missing.json" not in lines[0]


def _checkpoint(tmp_path, cfg, name="ckpt.pth"):
    torch.manual_seed(3)
    model = build_model(cfg)
    path = str(tmp_path / name)
    save_atomic({"model": model.state_dict(), "iteration": 1, "meta": {"model_config": cfg.to_dict()}}, path)
    return model, path


def test_whole_model_checkpoint_loads_every_weight_and_keeps_its_pixel_format(tmp_path):
    trained_cfg = get_preset("opmask_r18_tiny")
    trained_cfg.pixel_mean, trained_cfg.pixel_std, trained_cfg.input_format = MSRA_BGR_MEAN, (1.0, 1.0, 1.0), "BGR"
    source, path = _checkpoint(tmp_path, trained_cfg)
    cfg, wf = configure_weights(get_preset("opmask_r18_tiny"), path)
    assert (wf.kind, wf.format) == ("model", "checkpoint") and cfg.input_format == "BGR"
    assert cfg.pixel_mean == MSRA_BGR_MEAN and cfg.backbone.weights is None
    torch.manual_seed(99)
    model = build_with_weights(cfg, wf)
    for (k, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    # a plain state dict of the model is a whole model too
    plain = str(tmp_path / "plain.pth")
    torch.save(source.state_dict(), plain)
    assert inspect_weights_file(plain).kind == "model"
    # a checkpoint of another architecture: every mismatch named
    other = get_preset("opmask_r18_tiny")
    other.num_classes = 3
    _, path3 = _checkpoint(tmp_path, other, "three.pth")
    cfg, wf = configure_weights(get_preset("opmask_r18_tiny"), path3)
    with pytest.raises(WeightsMismatchError, match=r"shape mismatch .*roi_heads\.box_head\.cls_score\.weight"):
        build_with_weights(cfg, wf)


def test_train_cli_with_torchvision_weights(tmp_path, capsys):
    """Through the command line: the weights arrive (frozen stem and res2 stay the file's) and the run records RGB."""
    from opmask_fast import train

    sd = _resnet(18, seed=2).state_dict()
    path = str(tmp_path / "r18.pth")
    torch.save(sd, path)
    data = ensure_synthetic(SyntheticSpec(seed=2, num_train=4, num_val=2), str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    args = ["--train-ann", data["train_ann"], "--train-images", data["train_images"], "--val-ann", data["val_ann"],
            "--val-images", data["val_images"], "--split", "circle,triangle,cross", "--weights", path, "--set",
            "backbone.freeze_at=2", "--iters", "1", "--batch-size", "2", "--no-eval", "--quiet", "--output-dir", out]
    # the default CPU preset (lite) has a 32-wide trunk: the 64-wide file is refused before any work, saying how
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 2 and not os.path.exists(out)
    assert "32 channels wide and published weights are 64 wide: --set backbone.width=64" in capsys.readouterr().err
    train.main(["--preset", "opmask_r18_tiny", *args])
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert ckpt["meta"]["model_config"]["input_format"] == "RGB"
    for k in ("conv1.weight", "layer1.1.conv2.weight"):
        assert torch.equal(ckpt["model"]["backbone.bottom_up." + k], sd[k]), k
    assert not torch.equal(ckpt["model"]["backbone.bottom_up.layer4.0.conv1.weight"], sd["layer4.0.conv1.weight"])
