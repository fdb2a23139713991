"""Triton kernels of the object mask prior: out[r, d] = mask_features[r, d] + s * resize(minmax(cam_r)).

One program per RoI does the whole prior in one pass: it gathers the RoI's classifier row, reduces the box features
over C into the raw CAM (kept in registers, and saved in float32 for the backward), normalises it, applies the bilinear
resize as a small on-the-fly weight matrix and adds the result to every channel of the RoI's mask features. The
backward program reads grad_out once (its channel sum), applies the transposed resize and the normalisation's
derivative and writes the box-feature gradient (and the classifier's, by class) without any R x K x Hb x Wb
intermediate.

Only APIs present in Triton 3.6 through 3.9 are used (pointer arithmetic and masks; no block pointers). Every load and
store is masked, because the interpreter (TRITON_INTERPRET=1) does not catch out-of-bounds accesses; the launchers make
every input contiguous, because the kernels index with contiguous strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Spread below which a CAM counts as constant (its prior is zero); the reference uses the same value.
EPS = 1e-6
# Largest Hb * Wb the kernels hold in registers; bigger box maps go to the reference backend.
MAX_CAM_SIZE = 1024


@triton.jit
def _resize_taps(q, p, Hb, Wb, Wm, scale_h, scale_w):
    # Weights A[q, p] of the bilinear resize (align_corners=False, PyTorch's source-index rule) for output pixels q and
    # CAM pixels p: the resize is prior = A @ cam. Positions p outside the CAM never match a tap, so they weigh 0.
    qy = q // Wm
    qx = q % Wm
    sy = tl.maximum((qy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    sx = tl.maximum((qx.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), Hb - 1)  # truncation is floor here: sy >= 0
    x0 = tl.minimum(sx.to(tl.int32), Wb - 1)
    y1 = tl.minimum(y0 + 1, Hb - 1)
    x1 = tl.minimum(x0 + 1, Wb - 1)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    py = (p // Wb)[None, :]
    px = (p % Wb)[None, :]
    # At the last row/column y0 == y1, and the two taps add up to weight 1 as in PyTorch.
    wy = tl.where(py == y0[:, None], 1.0 - ly[:, None], 0.0) + tl.where(py == y1[:, None], ly[:, None], 0.0)
    wx = tl.where(px == x0[:, None], 1.0 - lx[:, None], 0.0) + tl.where(px == x1[:, None], lx[:, None], 0.0)
    return wy * wx


@triton.jit
def _object_prior_add_fwd_kernel(
    mf_ptr,  # (R, D, Q) mask features, Q = Hm * Wm
    bf_ptr,  # (N, C, P) box features, P = Hb * Wb
    w_ptr,  # (K, C) classifier weight
    cls_ptr,  # (R,) int64 class of each RoI
    rows_ptr,  # (R,) int64 box-feature row of each RoI (read only with HAS_ROWS)
    scale_ptr,  # (1,) gain tensor (read only with SCALE_PTR)
    out_ptr,  # (R, D, Q) output; may be mf_ptr itself (in-place inference)
    cam_ptr,  # (R, P) float32 raw CAM, saved for the backward
    scale_value, D, C, P, Q, Hb, Wb, Wm, scale_h, scale_w, eps,
    HAS_ROWS: tl.constexpr, SCALE_PTR: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    cls = tl.load(cls_ptr + r)
    if HAS_ROWS:
        row = tl.load(rows_ptr + r)
    else:
        row = r
    p = tl.arange(0, BLOCK_P)
    p_ok = p < P
    c_off = tl.arange(0, BLOCK_C)

    # Raw CAM: the selected classifier row times the RoI's box features, reduced over C in float32.
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + c_off
        c_ok = c < C
        w = tl.load(w_ptr + cls * C + c, mask=c_ok, other=0.0).to(tl.float32)
        x = tl.load(bf_ptr + row * C * P + c[:, None] * P + p[None, :], mask=c_ok[:, None] & p_ok[None, :], other=0.0)
        acc += w[:, None] * x.to(tl.float32)
    cam = tl.sum(acc, axis=0)
    tl.store(cam_ptr + r * P + p, cam, mask=p_ok)

    if NORMALIZE:
        lo = tl.min(tl.where(p_ok, cam, float("inf")), axis=0)
        hi = tl.max(tl.where(p_ok, cam, float("-inf")), axis=0)
        span = hi - lo
        ok = span >= eps
        # (p_ok & ok mixes a vector and a scalar mask, which the interpreter rejects: two wheres instead.)
        norm = tl.where(p_ok, tl.where(ok, (cam - lo) / tl.where(ok, span, 1.0), 0.0), 0.0)
    else:
        norm = tl.where(p_ok, cam, 0.0)
    if SCALE_PTR:
        norm = norm * tl.load(scale_ptr).to(tl.float32)
    else:
        norm = norm * scale_value

    # Resize a chunk of output pixels at a time, then add it to every channel of those pixels.
    d_off = tl.arange(0, BLOCK_D)
    base = r * D * Q
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        q_ok = q < Q
        prior = tl.sum(_resize_taps(q, p, Hb, Wb, Wm, scale_h, scale_w) * norm[None, :], axis=1)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + d_off
            m = (d < D)[:, None] & q_ok[None, :]
            offs = base + d[:, None] * Q + q[None, :]
            x = tl.load(mf_ptr + offs, mask=m, other=0.0)
            y = x.to(tl.float32) + prior[None, :]
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


# Gradient maths (one RoI r; cam = raw CAM over P pixels, A = resize matrix (Q x P), s = scale, G = grad_out (D x Q)):
#   out = mf + s * A @ norm                  =>  grad_mf = G (returned as is by the autograd wrapper)
#   g_prior[q] = sum_d G[d, q]               (channel sum; read grad_out once)
#   g_up = A^T @ g_prior                     (transposed resize, P values)
#   grad_s += sum_p norm[p] * g_up[p]        (per-RoI partial, summed over RoIs by the launcher)
#   g_norm = s * g_up
#   norm = (cam - lo) / span, lo = min cam, hi = max cam, span = hi - lo. With S0 = sum g_norm, S1 = sum g_norm * norm:
#   g_cam = (g_norm - [p is min] / n_min * (S0 - S1) - [p is max] / n_max * S1) / span
#   (tied minima/maxima share the gradient evenly, like autograd's amin/amax); span < eps: norm = 0 and g_cam = 0.
#   cam = w_k @ BF[n]  =>  grad_BF[n, c, p] += w_k[c] * g_cam[p];  grad_w[k, c] += sum_p BF[n, c, p] * g_cam[p]
# Several RoIs may share a box-feature row (rows given) or a class: those sums use float32 atomics into float32 buffers
# (bf16 atomics are missing on older GPUs and in the interpreter). Without rows each RoI owns its row: plain stores.
@triton.jit
def _object_prior_add_bwd_kernel(
    go_ptr,  # (R, D, Q) grad of the output
    bf_ptr,  # (N, C, P) box features (read only with NEED_W)
    w_ptr,  # (K, C) classifier weight
    cls_ptr,  # (R,) int64 class of each RoI
    rows_ptr,  # (R,) int64 box-feature row of each RoI (read only with HAS_ROWS)
    scale_ptr,  # (1,) gain tensor (read only with SCALE_PTR)
    cam_ptr,  # (R, P) float32 raw CAM saved by the forward
    gbf_ptr,  # (N, C, P) grad of the box features: float32 atomics with ATOMIC_BF, else stores in its own dtype
    gw_ptr,  # (K, C) float32 grad of the classifier weight, accumulated by class
    gs_ptr,  # (R,) float32 per-RoI grad of the scale
    scale_value, D, C, P, Q, Hb, Wb, Wm, scale_h, scale_w, eps,
    HAS_ROWS: tl.constexpr, SCALE_PTR: tl.constexpr, NORMALIZE: tl.constexpr, ATOMIC_BF: tl.constexpr,
    NEED_BF: tl.constexpr, NEED_W: tl.constexpr, NEED_S: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    cls = tl.load(cls_ptr + r)
    if HAS_ROWS:
        row = tl.load(rows_ptr + r)
    else:
        row = r
    p = tl.arange(0, BLOCK_P)
    p_ok = p < P
    cam = tl.load(cam_ptr + r * P + p, mask=p_ok, other=0.0)
    if NORMALIZE:
        lo = tl.min(tl.where(p_ok, cam, float("inf")), axis=0)
        hi = tl.max(tl.where(p_ok, cam, float("-inf")), axis=0)
        span = hi - lo
        ok = span >= eps
        inv_span = 1.0 / tl.where(ok, span, 1.0)
        norm = tl.where(p_ok, tl.where(ok, (cam - lo) * inv_span, 0.0), 0.0)
    else:
        norm = tl.where(p_ok, cam, 0.0)

    # g_up = A^T @ (channel sum of grad_out), one chunk of output pixels at a time.
    d_off = tl.arange(0, BLOCK_D)
    base = r * D * Q
    g_up = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        q_ok = q < Q
        g_prior = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + d_off
            m = (d < D)[:, None] & q_ok[None, :]
            g = tl.load(go_ptr + base + d[:, None] * Q + q[None, :], mask=m, other=0.0)
            g_prior += tl.sum(g.to(tl.float32), axis=0)
        g_up += tl.sum(_resize_taps(q, p, Hb, Wb, Wm, scale_h, scale_w) * g_prior[:, None], axis=0)
    if NEED_S:
        tl.store(gs_ptr + r, tl.sum(norm * g_up, axis=0))

    if SCALE_PTR:
        g = g_up * tl.load(scale_ptr).to(tl.float32)
    else:
        g = g_up * scale_value
    if NORMALIZE:
        is_min = tl.where(p_ok & (cam == lo), 1.0, 0.0)
        is_max = tl.where(p_ok & (cam == hi), 1.0, 0.0)
        s0 = tl.sum(g, axis=0)
        s1 = tl.sum(g * norm, axis=0)
        g = g - is_min * ((s0 - s1) / tl.sum(is_min, axis=0)) - is_max * (s1 / tl.sum(is_max, axis=0))
        g = tl.where(ok, g * inv_span, 0.0)
    g = tl.where(p_ok, g, 0.0)

    if NEED_BF or NEED_W:
        c_off = tl.arange(0, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + c_off
            c_ok = c < C
            m = c_ok[:, None] & p_ok[None, :]
            offs = row * C * P + c[:, None] * P + p[None, :]
            if NEED_BF:
                w = tl.load(w_ptr + cls * C + c, mask=c_ok, other=0.0).to(tl.float32)
                gb = w[:, None] * g[None, :]
                if ATOMIC_BF:
                    tl.atomic_add(gbf_ptr + offs, gb, mask=m, sem="relaxed")
                else:
                    tl.store(gbf_ptr + offs, gb.to(gbf_ptr.dtype.element_ty), mask=m)
            if NEED_W:
                x = tl.load(bf_ptr + offs, mask=m, other=0.0).to(tl.float32)
                tl.atomic_add(gw_ptr + cls * C + c, tl.sum(x * g[None, :], axis=1), mask=c_ok, sem="relaxed")


def _blocks(C: int, P: int, Q: int, D: int) -> dict[str, int]:
    # The CAM lives in registers (BLOCK_P); the other tiles are sized to about 4-8K elements per program.
    block_p = max(16, triton.next_power_of_2(P))
    block_c = max(1, min(triton.next_power_of_2(C), 4096 // block_p))
    block_q = max(16, min(triton.next_power_of_2(Q), 64))
    block_d = max(1, min(triton.next_power_of_2(max(D, 1)), 4096 // block_q))
    return dict(BLOCK_C=block_c, BLOCK_P=block_p, BLOCK_Q=block_q, BLOCK_D=block_d)


def _scale_args(scale_value: float, scale: Tensor | None, like: Tensor) -> tuple[Tensor, float]:
    if scale is None:
        return like, float(scale_value)  # any valid pointer: the kernel never reads it without SCALE_PTR
    return scale.contiguous(), 1.0


def object_prior_add_forward(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                             rows: Tensor | None, normalize: bool, scale_value: float, scale: Tensor | None,
                             out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Launch the forward: returns (out Tensor[R, D, Hm, Wm], raw cam Tensor[R, Hb * Wb] float32).

    Inputs must already be validated (shapes, index ranges). `out` may be `mask_features` itself (in place); it must
    be contiguous. Non-contiguous inputs are copied to contiguous ones here: the kernel assumes contiguous strides.
    """
    R, D, Hm, Wm = mask_features.shape
    N, C, Hb, Wb = box_features.shape
    mf = mask_features.contiguous()
    if out is None:
        out = torch.empty_like(mf, memory_format=torch.contiguous_format)
    assert out.is_contiguous() and out.shape == mf.shape
    cam = torch.empty(R, Hb * Wb, dtype=torch.float32, device=mf.device)
    if R == 0:
        return out, cam
    bf, w, cls = box_features.contiguous(), cls_weight.contiguous(), classes.contiguous()
    rows_t = cls if rows is None else rows.contiguous()
    scale_t, s_val = _scale_args(scale_value, scale, cls)
    _object_prior_add_fwd_kernel[(R,)](
        mf, bf, w, cls, rows_t, scale_t, out, cam,
        s_val, D, C, Hb * Wb, Hm * Wm, Hb, Wb, Wm, Hb / Hm, Wb / Wm, EPS,
        HAS_ROWS=rows is not None, SCALE_PTR=scale is not None, NORMALIZE=normalize,
        **_blocks(C, Hb * Wb, Hm * Wm, D), num_warps=4,
    )
    return out, cam


def object_prior_add_backward(grad_out: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                              rows: Tensor | None, cam: Tensor, normalize: bool, scale_value: float,
                              scale: Tensor | None, needs: tuple[bool, bool, bool]
                              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Launch the backward: grads of (box_features, cls_weight, scale), each None unless asked in `needs`."""
    R, D, Hm, Wm = grad_out.shape
    N, C, Hb, Wb = box_features.shape
    need_bf, need_w, need_s = needs
    dev = grad_out.device
    # Rows may repeat (several detections of one proposal), so they accumulate with float32 atomics; without rows RoI
    # r owns row r and stores its gradient directly (rows past R, if any, get zeros).
    atomic_bf = need_bf and rows is not None
    gbf = gw = gs = None
    if need_bf:
        if rows is not None:
            gbf = torch.zeros(N, C, Hb, Wb, dtype=torch.float32, device=dev)
        elif N > R:
            gbf = torch.zeros(N, C, Hb, Wb, dtype=box_features.dtype, device=dev)
        else:
            gbf = torch.empty(N, C, Hb, Wb, dtype=box_features.dtype, device=dev)
    if need_w:
        gw = torch.zeros(cls_weight.shape, dtype=torch.float32, device=dev)
    if need_s:
        gs = torch.empty(R, dtype=torch.float32, device=dev)
    if R > 0 and any(needs):
        go = grad_out.contiguous()
        cls = classes.contiguous()
        rows_t = cls if rows is None else rows.contiguous()
        scale_t, s_val = _scale_args(scale_value, scale, cls)
        bf = box_features.contiguous() if need_w else cam  # read only for the weight's gradient: copy only then
        _object_prior_add_bwd_kernel[(R,)](
            go, bf, cls_weight.contiguous(), cls, rows_t, scale_t, cam.contiguous(),
            gbf if gbf is not None else cam, gw if gw is not None else cam, gs if gs is not None else cam,
            s_val, D, C, Hb * Wb, Hm * Wm, Hb, Wb, Wm, Hb / Hm, Wb / Wm, EPS,
            HAS_ROWS=rows is not None, SCALE_PTR=scale is not None, NORMALIZE=normalize, ATOMIC_BF=atomic_bf,
            NEED_BF=need_bf, NEED_W=need_w, NEED_S=need_s,
            **_blocks(C, Hb * Wb, Hm * Wm, D), num_warps=4,
        )
    if gbf is not None:
        gbf = gbf.to(box_features.dtype)
    if gw is not None:
        gw = gw.to(cls_weight.dtype)
    if gs is not None:
        gs = gs.sum().reshape(1)
    return gbf, gw, gs
