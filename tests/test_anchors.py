"""Anchors and FPN level mapping against torchvision's public equivalents."""

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from opmask_fast.modeling.backbone import FPN, ResNet
from opmask_fast.modeling.proposal_generator.anchors import AnchorGenerator
from opmask_fast.ops import multi_scale_roi_align
from opmask_fast.ops.multi_scale_roi_align import assign_levels

SIZES, RATIOS, STRIDES = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64)


def test_anchors_match_torchvision():
    ours = AnchorGenerator(sizes=SIZES, ratios=RATIOS, strides=STRIDES)
    tv = TVAnchorGenerator(sizes=tuple((s,) for s in SIZES), aspect_ratios=(RATIOS,) * len(SIZES))
    h, w = 256, 384  # multiples of 64: torchvision derives each level's stride from the sizes
    feats = [torch.zeros(1, 8, h // s, w // s) for s in STRIDES]
    tv_anchors = tv(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    mine = torch.cat(ours(feats))
    # torchvision rounds the cell anchors to whole pixels, detectron2 (and we) do not: within half a pixel ...
    assert mine.shape == tv_anchors.shape
    assert (mine - tv_anchors).abs().max() <= 0.5
    # ... and identical once our cell anchors are rounded the same way (same order, same shifts).
    for i in range(len(SIZES)):
        getattr(ours, f"cell{i}").copy_(getattr(ours, f"cell{i}").round())
    ours._cache.clear()
    torch.testing.assert_close(torch.cat(ours(feats)), tv_anchors, rtol=0, atol=0)


def test_anchor_areas_and_ratios():
    gen = AnchorGenerator(sizes=SIZES, ratios=RATIOS, strides=STRIDES)
    cell = gen.cell0
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 32.0 * 32.0))
    torch.testing.assert_close(h / w, torch.tensor(RATIOS))


def test_fpn_level_mapping_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 600
    wh = torch.exp(torch.rand(500, 2, generator=g) * 6.5)  # 1 .. 665 px: every level and both clamps
    boxes = torch.cat([xy, xy + wh], dim=1)
    mapper = LevelMapper(k_min=2, k_max=5)
    expected = mapper([boxes]).to(torch.int64)
    torch.testing.assert_close(assign_levels(boxes, min_level=2, max_level=5), expected)
    # float64 boxes within float32's rounding of a level boundary (at side b * 2^-1e-6, the 1e-6 of the level rule):
    # the boxes' dtype decides, as in torchvision
    side = torch.tensor([b * 2 ** -1e-6 * (1 + k * 2e-9) for b in (56.0, 112.0, 224.0) for k in range(-60, 61)],
                        dtype=torch.float64)
    boxes = torch.stack([torch.zeros_like(side), torch.zeros_like(side), side, side], dim=1)
    torch.testing.assert_close(assign_levels(boxes, min_level=2, max_level=5), mapper([boxes]).to(torch.int64))


def test_multi_scale_pooler_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = {f"p{i}": torch.randn(1, 4, 256 // 2**i, 256 // 2**i, generator=g) for i in range(2, 6)}
    xy = torch.rand(40, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + 4 + torch.rand(40, 2, generator=g) * 100], dim=1)
    tv = MultiScaleRoIAlign(list(feats), 7, sampling_ratio=2)
    expected = tv(feats, [boxes], [(256, 256)])
    ours = multi_scale_roi_align(list(feats.values()), [boxes], 7, spatial_scales=[1 / 4, 1 / 8, 1 / 16, 1 / 32],
                                 sampling_ratio=2, aligned=False)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_fpn_shapes_and_p6():
    torch.manual_seed(0)
    fpn = FPN(bottom_up=ResNet(depth=18, norm="BN", freeze_at=0, stride_in_1x1=False), out_channels=16)
    outs = fpn(torch.randn(1, 3, 128, 192))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 128 // s, 192 // s) for s in STRIDES]
    torch.testing.assert_close(outs[4], F.max_pool2d(outs[3], 1, 2))
