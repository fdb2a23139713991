"""Mask pasting: the batched separable paste equals detectron2's grid_sample paste and agrees with torchvision's."""

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from opmask_fast.modeling.paste import paste_mask_probs, paste_masks


def _grid_sample_paste(masks, boxes, h, w):
    """detectron2's _do_paste_mask over the whole image (bilinear, zero padding, align_corners=False)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    img_y = (torch.arange(h, dtype=torch.float32) + 0.5)[None] - y0[:, None]
    img_x = (torch.arange(w, dtype=torch.float32) + 0.5)[None] - x0[:, None]
    img_y = img_y / (y1 - y0)[:, None] * 2 - 1
    img_x = img_x / (x1 - x0)[:, None] * 2 - 1
    n = masks.shape[0]
    grid = torch.stack([img_x[:, None, :].expand(n, h, w), img_y[:, :, None].expand(n, h, w)], dim=3)
    return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]


def _random(n, h, w, g):
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.8 - 10  # some boxes leave the image
    wh = 3 + torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.6
    probs = torch.rand(n, 28, 28, generator=g)
    return probs, torch.cat([xy, xy + wh], dim=1)


def test_paste_equals_grid_sample():
    g = torch.Generator().manual_seed(0)
    probs, boxes = _random(30, 97, 131, g)
    torch.testing.assert_close(paste_mask_probs(probs, boxes, 97, 131), _grid_sample_paste(probs, boxes, 97, 131),
                               rtol=1e-4, atol=1e-5)


def test_paste_agrees_with_torchvision():
    # torchvision resizes each mask to its integer-rounded box (after padding it by one cell): the two conventions
    # differ on boundary pixels only.
    g = torch.Generator().manual_seed(1)
    probs, boxes = _random(20, 120, 160, g)
    # confident ellipses with soft edges, as a trained head gives: the comparison is about geometry, not noise
    t = (torch.arange(28.0) + 0.5) / 14 - 1
    r = torch.sqrt(t[None, :, None] ** 2 / 0.8 + t[None, None, :] ** 2 / (0.3 + probs[:, :1, :1]))
    probs = torch.sigmoid(8 * (1 - r))
    ours = paste_masks(probs, boxes, 120, 160, threshold=0.5)
    tv = paste_masks_in_image(probs[:, None], boxes, (120, 160), padding=1)[:, 0] >= 0.5
    inter = (ours & tv).flatten(1).sum(1).float()
    union = (ours | tv).flatten(1).sum(1).float()
    iou = inter / union.clamp(min=1)
    big = ((boxes[:, 2:] - boxes[:, :2]) >= 16).all(dim=1)  # integer rounding dominates a 5-pixel-wide box
    assert iou[big].min() > 0.85 and iou.mean() > 0.9, iou
    assert (ours != tv).float().mean() < 0.02


def test_paste_chunks_threshold_and_empty():
    g = torch.Generator().manual_seed(2)
    probs, boxes = _random(9, 40, 50, g)
    full = paste_mask_probs(probs, boxes, 40, 50) >= 0.5
    chunked = paste_masks(probs, boxes, 40, 50, threshold=0.5, chunk_bytes=4 * 40 * 50 * 2)  # 2 per chunk
    assert chunked.dtype == torch.bool and torch.equal(chunked, full)
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), 40, 50).shape == (0, 40, 50)
    # a degenerate (empty) box pastes nothing instead of NaN
    out = paste_mask_probs(torch.ones(1, 28, 28), torch.tensor([[10.0, 10.0, 10.0, 20.0]]), 40, 50)
    assert torch.isfinite(out).all() and out.sum() == 0


def test_paste_is_float32_under_autocast():
    """Under bf16 autocast the matmuls of the paste would run in bfloat16 and move pixels across the threshold: the
    paste is float32 whatever the autocast state, as the dynamic path's postprocess and the static path share it."""
    g = torch.Generator().manual_seed(1)
    probs, boxes = _random(20, 97, 131, g)
    want, want_masks = paste_mask_probs(probs, boxes, 97, 131), paste_masks(probs, boxes, 97, 131)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_masks = paste_mask_probs(probs, boxes, 97, 131), paste_masks(probs, boxes, 97, 131)
    assert got.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_masks, want_masks)
    meta = paste_masks(probs.to("meta"), boxes.to("meta"), 97, 131)  # shape propagation: no autocast to turn off
    assert meta.shape == (20, 97, 131) and meta.dtype == torch.bool
