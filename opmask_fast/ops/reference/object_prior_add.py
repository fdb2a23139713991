"""Plain PyTorch reference of the object mask prior (OPMask's class activation map added to the mask features).

It is the CPU backend of `opmask_fast.ops.object_prior_add` and the oracle of the Triton kernels' tests. It works in
any floating dtype (float64 for gradcheck) and computes only the selected class row of every RoI: a gather of the
classifier rows and a batched dot product, never the K CAMs of a 1x1 convolution.

`object_prior_add_backward` writes the gradient out by hand with the same maths as the Triton backward kernel; the
tests check it against autograd through `object_prior_add`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this spread (max - min) a CAM is treated as constant and its prior is zero: min-max would divide 0 by 0.
EPS = 1e-6


def class_activation(box_features: Tensor, cls_weight: Tensor, classes: Tensor, rows: Tensor | None = None) -> Tensor:
    """Raw CAM of each RoI's class.

    Args:
        box_features: Tensor[N, C, Hb, Wb], the last box-head feature map.
        cls_weight: Tensor[K, C], the box classifier's weight.
        classes: Tensor[R] int64, the class slice per RoI.
        rows: Tensor[R] int64 or None, the box-feature row of each RoI (None: row r).

    Returns:
        Tensor[R, Hb * Wb] float32 (float64 for float64 box features): sum_c cls_weight[classes[r], c] *
        box_features[rows[r], c].
    """
    R = classes.shape[0]
    # Advanced indexing, not index_select: index_select over dim 0 of a large tensor ran 40x slower on 2 CPU threads.
    # The whole tensor when it has exactly R rows: a [:R] slice would make autograd zero-fill and copy its gradient.
    if rows is None:
        bf = box_features if box_features.shape[0] == R else box_features[:R]
    else:
        bf = box_features[rows]
    # Accumulated in float32 at least, as the Triton kernels do: a half-precision CAM loses the small spread that the
    # min-max normalisation then stretches to [0, 1] (an offset of 64 leaves bfloat16 a step of 0.5).
    acc = cam_dtype(bf.dtype)
    w = cls_weight[classes].to(acc)
    return torch.bmm(w.unsqueeze(1), bf.flatten(2).to(acc)).squeeze(1)


def cam_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a CAM is computed and kept in for box features of `dtype`: float64 or float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_cam(cam: Tensor, eps: float = EPS) -> Tensor:
    """Per-RoI min-max normalisation of Tensor[R, P] to [0, 1]; a RoI whose spread is below `eps` becomes zero."""
    if cam.shape[0] == 0:
        return cam.clone()
    lo = cam.amin(dim=1, keepdim=True)
    span = cam.amax(dim=1, keepdim=True) - lo
    valid = span >= eps
    # The safe denominator keeps the unselected branch finite, so the gradient of a constant CAM is 0, not NaN.
    return torch.where(valid, (cam - lo) / torch.where(valid, span, torch.ones_like(span)), torch.zeros_like(cam))


def object_prior(box_features: Tensor, cls_weight: Tensor, classes: Tensor, rows: Tensor | None = None,
                 normalize: bool = True) -> Tensor:
    """The (normalised) CAM of each RoI's class: Tensor[R, Hb, Wb] in box_features' dtype."""
    Hb, Wb = box_features.shape[-2:]
    cam = class_activation(box_features, cls_weight, classes, rows)
    if normalize:
        cam = normalize_cam(cam)
    return cam.view(-1, Hb, Wb).to(box_features.dtype)


def object_prior_add(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                     rows: Tensor | None = None, normalize: bool = True, scale: float | Tensor | None = None) -> Tensor:
    """mask_features + scale * resize(object_prior(...)), differentiable by autograd.

    Args:
        mask_features: Tensor[R, D, Hm, Wm], the RoIAlign mask features.
        box_features, cls_weight, classes, rows, normalize: as in `object_prior`.
        scale: None (1, the paper), a float, or a one-element tensor (a learnable gain).

    Returns:
        Tensor[R, D, Hm, Wm]; the prior is resized bilinearly with align_corners=False and added to every channel.
    """
    cam = class_activation(box_features, cls_weight, classes, rows)
    return add_prior(mask_features, cam.view(-1, *box_features.shape[-2:]), normalize, scale)


def add_prior(mask_features: Tensor, cam: Tensor, normalize: bool = True,
              scale: float | Tensor | None = None) -> Tensor:
    """mask_features Tensor[R, D, Hm, Wm] + scale * resize(normalised raw cam Tensor[R, Hb, Wb])."""
    prior = resized_prior(cam, mask_features.shape[-2:], normalize, scale)
    if prior.dtype == mask_features.dtype:
        return mask_features + prior
    # Mixed precision: the sum in the wider dtype, rounded once to the features' (as the kernels write it).
    wide = torch.promote_types(mask_features.dtype, prior.dtype)
    return (mask_features.to(wide) + prior.to(wide)).to(mask_features.dtype)


def resized_prior(cam: Tensor, size: tuple[int, int], normalize: bool = True,
                  scale: float | Tensor | None = None) -> Tensor:
    """scale * resize(normalised raw cam Tensor[R, Hb, Wb]) as Tensor[R, 1, Hm, Wm], ready to broadcast over D."""
    Hb, Wb = cam.shape[-2:]
    prior = cam.flatten(1)
    if normalize:
        prior = normalize_cam(prior)
    prior = F.interpolate(prior.view(-1, 1, Hb, Wb), size=tuple(size), mode="bilinear", align_corners=False)
    if scale is not None:
        prior = prior * (scale.reshape(()) if isinstance(scale, Tensor) else scale)
    return prior


def bilinear_matrix(out_size: int, in_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Tensor[out_size, in_size]: the 1-D bilinear resize (align_corners=False, PyTorch's convention) as a matrix.

    The 2-D resize is separable: resized = A_y @ cam @ A_x^T, so its transpose is A_y^T @ grad @ A_x.
    """
    dst = torch.arange(out_size, dtype=dtype, device=device)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    frac = src - i0.to(dtype)
    mat = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    rng = torch.arange(out_size, device=device)
    mat.index_put_((rng, i0), 1 - frac, accumulate=True)
    mat.index_put_((rng, i1), frac, accumulate=True)
    return mat


def object_prior_add_backward(grad_out: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                              rows: Tensor | None, cam: Tensor, normalize: bool, scale: float | Tensor | None,
                              needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of `object_prior_add` to (box_features, cls_weight, scale), each None unless asked in `needs`.

    `cam` is the raw Tensor[R, Hb * Wb] of `class_activation`; the maths is that of the Triton backward kernel
    (see kernels/object_prior_add.py): the channel sum of grad_out, the transposed resize, the derivative of the
    min-max normalisation (min and max ties share their gradient evenly, as autograd's amin/amax do), then the
    weighted-sum's two factors.
    """
    R, _, Hm, Wm = grad_out.shape
    N, C, Hb, Wb = box_features.shape
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    # Sum in grad_out's dtype (CPU/CUDA reductions accumulate low precision in float32): sum(dtype=) would first copy
    # the whole grad_out to float32.
    g_prior = grad_out.sum(dim=1).to(acc)                                               # (R, Hm, Wm)
    a_y = bilinear_matrix(Hm, Hb, acc, grad_out.device)
    a_x = bilinear_matrix(Wm, Wb, acc, grad_out.device)
    g_up = (a_y.t() @ g_prior @ a_x).flatten(1)                                         # (R, P)
    cam = cam.to(acc)
    if normalize and R > 0:
        lo = cam.amin(dim=1, keepdim=True)
        hi = cam.amax(dim=1, keepdim=True)
        span = hi - lo
        valid = span >= EPS
        span = torch.where(valid, span, torch.ones_like(span))
        norm = torch.where(valid, (cam - lo) / span, torch.zeros_like(cam))
    else:
        valid, span, norm = None, None, cam
    grad_scale = None
    if needs[2]:
        grad_scale = (norm * g_up).sum().reshape(1)
    s = 1.0 if scale is None else (scale.to(acc).reshape(()) if isinstance(scale, Tensor) else float(scale))
    g_norm = g_up * s
    if valid is not None:
        is_min = (cam == lo).to(acc)
        is_max = (cam == hi).to(acc)
        s0 = g_norm.sum(dim=1, keepdim=True)
        s1 = (g_norm * norm).sum(dim=1, keepdim=True)
        g_cam = g_norm - is_min / is_min.sum(1, keepdim=True) * (s0 - s1) - is_max / is_max.sum(1, keepdim=True) * s1
        g_cam = torch.where(valid, g_cam / span, torch.zeros_like(g_cam))
    else:
        g_cam = g_norm
    w = cls_weight[classes].to(acc)                                                     # (R, C)
    grad_bf = grad_w = None
    if needs[0]:
        if rows is None and N == R:  # each RoI owns its row: written once in its dtype, no zero fill, no scatter
            dt = box_features.dtype
            grad_bf = w.to(dt).unsqueeze(2) * g_cam.to(dt).unsqueeze(1)                 # (R, C, P)
        else:  # rows may repeat (several detections of one proposal): accumulate (like autograd, in their dtype)
            dt = box_features.dtype
            grad_bf = torch.zeros(N, C, Hb * Wb, dtype=dt, device=grad_out.device)
            grad_bf.index_add_(0, torch.arange(R, device=grad_out.device) if rows is None else rows,
                               (w.unsqueeze(2) * g_cam.unsqueeze(1)).to(dt))
        grad_bf = grad_bf.view(N, C, Hb, Wb).to(box_features.dtype)
    if needs[1]:
        bf = box_features[:R] if rows is None else box_features[rows]
        per_roi = torch.bmm(bf.flatten(2).to(acc), g_cam.unsqueeze(2)).squeeze(2)    # (R, C)
        grad_w = torch.zeros(cls_weight.shape, dtype=acc, device=grad_out.device)
        grad_w.index_add_(0, classes, per_roi)
        grad_w = grad_w.to(cls_weight.dtype)
    return grad_bf, grad_w, grad_scale
