"""Single-image overfit on the CPU: every loss of both models falls clearly within a few dozen SGD steps."""

import pytest
import torch

from opmask_fast.config import get_preset

from opmask_fast.modeling import build_model


def _scene(h=80, w=96):
    # two flat-coloured shapes on a grey background: a rectangle (mask supervised) and a disc (box only)
    img = torch.full((3, h, w), 120.0)
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:50, 8:40] = 1
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks[1] = (((yy - 50) ** 2 + (xx - 65) ** 2) <= 20**2).to(torch.uint8)
    img[:, masks[0].bool()] = torch.tensor([230.0, 40.0, 40.0])[:, None]
    img[:, masks[1].bool()] = torch.tensor([40.0, 60.0, 220.0])[:, None]
    masks[1] = 0  # box only: drawn in the image, no mask in the target (a zero row, as the datasets give it)
    target = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [45.0, 30.0, 86.0, 71.0]]),
              "labels": torch.tensor([0, 1]), "masks": masks, "has_mask": torch.tensor([True, False])}
    return img, target


@pytest.mark.parametrize("preset", ["opmask_r18_tiny", "baseline_r18_tiny"])
def test_single_image_overfit(preset):
    torch.manual_seed(0)
    cfg = get_preset(preset)
    cfg.num_classes = 2
    cfg.backbone.freeze_at = 5  # a fixed random ResNet: the heads and FPN must fit on their own, at half the cost
    cfg.backbone.fpn_channels = 32
    cfg.rpn.post_nms_topk_train = 200
    cfg.roi_heads.batch_size_per_image = 32
    cfg.roi_heads.box_head_conv_dims = (32, 32, 32, 32)
    cfg.roi_heads.mask_head_conv_dim = 16
    model = build_model(cfg).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    img, target = _scene()
    history = []
    for _ in range(40):
        losses = model([img], [target])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:3]) / 3 for k in history[0]}
    last = {k: sum(h[k] for h in history[-3:]) / 3 for k in history[0]}
    assert sum(last.values()) < 0.6 * sum(first.values()), (first, last)
    # box regression is left out: its normaliser is all sampled RoIs, and more of them turn foreground as the RPN learns
    for k, ratio in (("loss_rpn_cls", 0.5), ("loss_cls", 0.7), ("loss_mask", 0.8)):
        assert last[k] < ratio * first[k], (k, first, last)
