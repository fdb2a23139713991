"""Backbone weights from local files: torchvision state dicts, detectron2/MSRA pickles, and clear errors."""

import os
import pickle

import pytest
import torch
import torchvision

from opmask_fast.config import get_preset, with_torchvision_weights
from opmask_fast.modeling import build_model
from opmask_fast.modeling.backbone import ResNet
from opmask_fast.modeling.weights import WeightsMismatchError, load_backbone_weights


def _tv_resnet_to_file(tmp_path, depth, name="r.pth"):
    torch.manual_seed(0)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    # non-trivial BN statistics, so a frozen norm that ignored them would be caught
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = os.path.join(tmp_path, name)
    torch.save(net.state_dict(), path)
    return net.eval(), path


def _tv_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def test_torchvision_state_dict_loads_and_matches_outputs(tmp_path):
    net, path = _tv_resnet_to_file(tmp_path, 18)
    ours = ResNet(depth=18, norm="FrozenBN", freeze_at=2, stride_in_1x1=False)
    assert load_backbone_weights(ours, path) == "torchvision"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), _tv_features(net, x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_build_model_with_torchvision_weights(tmp_path):
    net, path = _tv_resnet_to_file(tmp_path, 18)
    cfg = with_torchvision_weights(get_preset("baseline_r18_tiny"), path)
    model = build_model(cfg)
    torch.testing.assert_close(model.backbone.bottom_up.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    assert cfg.input_format == "RGB" and not cfg.backbone.stride_in_1x1


def test_mismatched_state_dict_lists_keys(tmp_path):
    _, path = _tv_resnet_to_file(tmp_path, 34)
    with pytest.raises(WeightsMismatchError, match=r"unexpected in file \(\d+\): .*layer1\.2\.conv1\.weight"):
        load_backbone_weights(ResNet(depth=18), path)
    _, path18 = _tv_resnet_to_file(tmp_path, 18, "r18.pth")
    with pytest.raises(WeightsMismatchError) as e:
        load_backbone_weights(ResNet(depth=50), path18)
    msg = str(e.value)
    assert "missing in file" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatch" in msg and "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in msg


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone_weights(ResNet(depth=18), os.path.join(tmp_path, "nope.pth"))
    bad = os.path.join(tmp_path, "bad.pth")
    with open(bad, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        load_backbone_weights(ResNet(depth=18), bad)


def _caffe2_names(sd):
    """torchvision ResNet-50 names -> the MSRA caffe2 names of detectron2's R-50.pkl (affine BN only)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("fc.") or k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        if parts[0] == "conv1":
            out["conv1_w"] = v
        elif parts[0] == "bn1":
            out["res_conv1_bn_" + {"weight": "s", "bias": "b"}[parts[1]]] = v
        else:
            stage, block, mod = int(parts[0][5:]) + 1, parts[1], parts[2]
            base = f"res{stage}_{block}_"
            if mod == "downsample":
                name = base + ("branch1_w" if parts[3] == "0" else "branch1_bn_" + {"weight": "s", "bias": "b"}[parts[4]])
            else:
                letter = "abc"[int(mod[-1]) - 1]
                name = base + (f"branch2{letter}_w" if mod.startswith("conv")
                               else f"branch2{letter}_bn_" + {"weight": "s", "bias": "b"}[parts[3]])
            out[name] = v
    return out


def test_detectron2_msra_pickle(tmp_path):
    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    blobs = {k: v.numpy() for k, v in _caffe2_names(sd).items()}
    blobs["res2_0_branch2a_w_momentum"] = blobs["res2_0_branch2a_w"]
    path = os.path.join(tmp_path, "R-50.pkl")
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "__author__": "test"}, f)
    ours = ResNet(depth=50)
    assert load_backbone_weights(ours, path) == "caffe2"
    torch.testing.assert_close(ours.layer3[5].conv3.weight, sd["layer3.5.conv3.weight"])
    torch.testing.assert_close(ours.layer1[0].downsample[1].weight, sd["layer1.0.downsample.1.weight"])
    assert (ours.layer2[0].bn1.running_var == 1).all() and (ours.layer2[0].bn1.running_mean == 0).all()


def test_detectron2_named_state_dict(tmp_path):
    net, _ = _tv_resnet_to_file(tmp_path, 18)
    d2 = {}
    for k, v in net.state_dict().items():
        k = k.replace("conv1.weight", "stem.conv1.weight", 1) if k == "conv1.weight" else k
        k = k.replace("bn1.", "stem.conv1.norm.", 1) if k.startswith("bn1.") else k
        for i in range(1, 5):
            k = k.replace(f"layer{i}.", f"res{i + 1}.", 1)
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        for j in (1, 2):
            k = k.replace(f"bn{j}.", f"conv{j}.norm.")
        d2["backbone.bottom_up." + k] = v
    path = os.path.join(tmp_path, "d2.pth")
    torch.save({"model": d2}, path)
    ours = ResNet(depth=18, stride_in_1x1=False)
    assert load_backbone_weights(ours, path) == "detectron2"
    torch.testing.assert_close(ours.layer2[0].downsample[1].running_var, net.layer2[0].downsample[1].running_var)


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = os.path.join(tmp_path, "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": os.system}, f)
    with pytest.raises(ValueError, match="refusing"):
        load_backbone_weights(ResNet(depth=50), path)


@pytest.mark.parametrize("depth,width", [(18, 32), (34, 16), (50, 24)])
def test_narrow_trunk_channels_and_strides(depth, width):
    torch.manual_seed(0)
    net = ResNet(depth=depth, norm="BN", freeze_at=0, stride_in_1x1=False, width=width)
    expansion = 1 if depth < 50 else 4
    assert net.out_channels == [width * 2**i * expansion for i in range(4)]
    outs = net(torch.randn(2, 3, 96, 160))
    assert [tuple(o.shape) for o in outs] == [(2, c, 96 // s, 160 // s) for c, s in zip(net.out_channels,
                                                                                       (4, 8, 16, 32))]


def test_weights_for_a_wider_trunk_name_the_width(tmp_path):
    from opmask_fast.training.initial_weights import _check_backbone

    _, path = _tv_resnet_to_file(tmp_path, 18)
    cfg = get_preset("baseline_r18_tiny")
    cfg.backbone.width = 32
    with pytest.raises(WeightsMismatchError, match=r"conv1\.weight: file \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)") as e:
        _check_backbone(cfg, path)
    assert "backbone.width" in str(e.value)
    with pytest.raises(ValueError, match="backbone.width"):
        cfg.backbone.width = 0
        cfg.validate()
