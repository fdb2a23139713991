"""The Triton programs of the object mask prior (device code; `object_prior_add` launches them).

`_object_prior_add_fwd_kernel`: one program per RoI gathers the RoI's classifier row, reduces the box features over C
into the raw CAM (kept in registers, and saved in float32 for the backward), normalises it, applies the bilinear
resize as a small on-the-fly weight matrix and adds the result to every channel of the RoI's mask features (or writes
the map alone). `_object_prior_add_bwd_kernel`: reads grad_out once (its channel sum), applies the transposed resize
and the normalisation's derivative and writes the box-feature gradient (and the classifier's, by class).
`_box_grad_rows_kernel`: with `rows`, writes every box-feature row's gradient once from the RoIs' gradients.

Only APIs present in Triton 3.6 through 3.9 are used (pointer arithmetic and masks; no block pointers). Every load and
store is masked, because the interpreter (TRITON_INTERPRET=1) does not catch out-of-bounds accesses; the kernels index
with contiguous strides (the launchers make every input contiguous).
"""

import triton
import triton.language as tl


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
def _this_roi(cls_ptr, rows_ptr, HAS_ROWS: tl.constexpr):
    # This program's RoI r, its class and its box-feature row (r itself without rows).
    r = tl.program_id(0).to(tl.int64)
    cls = tl.load(cls_ptr + r)
    if HAS_ROWS:
        row = tl.load(rows_ptr + r)
    else:
        row = r
    return r, cls, row


@triton.jit
def _minmax(cam, p_ok, eps):
    # The min-max normalised CAM over the valid pixels p_ok, 0 where its spread is below eps; also (lo, hi, ok, span)
    # for the backward, span 1 where not ok so that dividing by it is safe. (p_ok & ok would mix a vector and a
    # scalar mask, which the interpreter rejects: two wheres instead.)
    lo = tl.min(tl.where(p_ok, cam, float("inf")), axis=0)
    hi = tl.max(tl.where(p_ok, cam, float("-inf")), axis=0)
    ok = hi - lo >= eps
    span = tl.where(ok, hi - lo, 1.0)
    norm = tl.where(p_ok, tl.where(ok, (cam - lo) / span, 0.0), 0.0)
    return norm, lo, hi, ok, span


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
    prior_ptr,  # (R, P) the normalised, unscaled, unresized prior in out's dtype (written only with STORE_PRIOR)
    scale_value, scale_h, scale_w, eps,
    D: tl.constexpr, C: tl.constexpr, P: tl.constexpr, Q: tl.constexpr, Hb: tl.constexpr, Wb: tl.constexpr,
    Wm: tl.constexpr, HAS_ROWS: tl.constexpr, SCALE_PTR: tl.constexpr, NORMALIZE: tl.constexpr,
    READ_MF: tl.constexpr, STORE_PRIOR: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r, cls, row = _this_roi(cls_ptr, rows_ptr, HAS_ROWS)
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
        norm, lo, hi, ok, span = _minmax(cam, p_ok, eps)
    else:
        norm = tl.where(p_ok, cam, 0.0)
    if STORE_PRIOR:
        tl.store(prior_ptr + r * P + p, norm.to(prior_ptr.dtype.element_ty), mask=p_ok)
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
            if READ_MF:
                x = tl.load(mf_ptr + offs, mask=m, other=0.0)
                y = x.to(tl.float32) + prior[None, :]
            else:  # the prior alone (object_prior): nothing to read
                y = tl.zeros((BLOCK_D, BLOCK_Q), dtype=tl.float32) + prior[None, :]
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
# Without rows each RoI owns its row: plain stores of grad_BF. With rows several RoIs may share one, so this kernel stores
# each RoI's g_cam (R x P float32) and `_box_grad_rows_kernel` writes every box-feature row once, summing the g_cam of
# the RoIs that read it (RoIs grouped by row on the device): no atomics, no float32 copy of grad_BF, deterministic.
# The classifier's gradient (by class; the model detaches the classifier) uses float32 atomics into a K x C buffer.
@triton.jit
def _object_prior_add_bwd_kernel(
    go_ptr,  # (R, D, Q) grad of the output
    bf_ptr,  # (N, C, P) box features (read only with NEED_W)
    w_ptr,  # (K, C) classifier weight
    cls_ptr,  # (R,) int64 class of each RoI
    rows_ptr,  # (R,) int64 box-feature row of each RoI (read only with HAS_ROWS)
    scale_ptr,  # (1,) gain tensor (read only with SCALE_PTR)
    cam_ptr,  # (R, P) float32 raw CAM saved by the forward
    gbf_ptr,  # (N, C, P) grad of the box features in their dtype (without rows), or (R, P) float32 g_cam (rows)
    gw_ptr,  # (K, C) float32 grad of the classifier weight, accumulated by class
    gs_ptr,  # (R,) float32 per-RoI grad of the scale
    scale_value, scale_h, scale_w, eps,
    D: tl.constexpr, C: tl.constexpr, P: tl.constexpr, Q: tl.constexpr, Hb: tl.constexpr, Wb: tl.constexpr,
    Wm: tl.constexpr, HAS_ROWS: tl.constexpr, SCALE_PTR: tl.constexpr, NORMALIZE: tl.constexpr,
    NEED_BF: tl.constexpr, NEED_W: tl.constexpr, NEED_S: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r, cls, row = _this_roi(cls_ptr, rows_ptr, HAS_ROWS)
    p = tl.arange(0, BLOCK_P)
    p_ok = p < P
    cam = tl.load(cam_ptr + r * P + p, mask=p_ok, other=0.0)
    if NORMALIZE:
        norm, lo, hi, ok, span = _minmax(cam, p_ok, eps)
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
        g = tl.where(ok, g / span, 0.0)
    g = tl.where(p_ok, g, 0.0)
    if NEED_BF and HAS_ROWS:
        tl.store(gbf_ptr + r * P + p, g, mask=p_ok)  # g_cam: _box_grad_rows_kernel writes the rows

    if (NEED_BF and not HAS_ROWS) or NEED_W:
        c_off = tl.arange(0, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + c_off
            c_ok = c < C
            m = c_ok[:, None] & p_ok[None, :]
            offs = row * C * P + c[:, None] * P + p[None, :]
            if NEED_BF and not HAS_ROWS:
                w = tl.load(w_ptr + cls * C + c, mask=c_ok, other=0.0).to(tl.float32)
                tl.store(gbf_ptr + offs, (w[:, None] * g[None, :]).to(gbf_ptr.dtype.element_ty), mask=m)
            if NEED_W:
                x = tl.load(bf_ptr + offs, mask=m, other=0.0).to(tl.float32)
                tl.atomic_add(gw_ptr + cls * C + c, tl.sum(x * g[None, :], axis=1), mask=c_ok, sem="relaxed")


@triton.jit
def _box_grad_rows_kernel(
    gcam_ptr,  # (R, P) float32 g_cam of each RoI
    w_ptr,  # (K, C) classifier weight
    cls_ptr,  # (R,) int64 class of each RoI
    order_ptr,  # (R,) int64 RoIs sorted by row
    start_ptr,  # (N + 1,) int64: the RoIs of row n are order[start[n]:start[n + 1]]
    gbf_ptr,  # (N, C, P) grad of the box features, in their dtype; every element written once
    C: tl.constexpr, P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    first = tl.load(start_ptr + n)
    last = tl.load(start_ptr + n + 1)
    p = tl.arange(0, BLOCK_P)
    p_ok = p < P
    c_off = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + c_off
        c_ok = c < C
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        # The RoIs reading this row, in RoI order (a row no RoI reads gets zeros). A while loop, not range() over the
        # loaded bounds: Triton's interpreter (3.6) turns range()'s bounds into Python ints, which numpy 2 refuses
        # for its 1-element arrays; compiled, both are the same scf loop.
        i = first
        while i < last:
            r = tl.load(order_ptr + i)
            cls = tl.load(cls_ptr + r)
            w = tl.load(w_ptr + cls * C + c, mask=c_ok, other=0.0).to(tl.float32)
            g = tl.load(gcam_ptr + r * P + p, mask=p_ok, other=0.0)
            acc += w[:, None] * g[None, :]
            i += 1
        tl.store(gbf_ptr + n * C * P + c[:, None] * P + p[None, :], acc.to(gbf_ptr.dtype.element_ty),
                 mask=c_ok[:, None] & p_ok[None, :])
