"""Launchers of the object mask prior's Triton programs (`object_prior_add_jit`): out[r, d] = mask_features[r, d] +
s * resize(minmax(cam_r)), its backward, and the prior alone.

Each launcher allocates what the programs write, sizes the tiles (`_blocks`: the CAM in registers, the other tiles
about 4-8K elements per program), launches one program per RoI on the tensors' own CUDA device (Triton launches on
the current one) and, with `rows` in the backward, groups the RoIs by box-feature row on the device for the program
that writes every row once. Shapes (D, C, Hb, Wb, Hm, Wm) are compile-time constants: the model's are fixed, so each
compiles once. The launchers make every input contiguous, because the programs index with contiguous strides.
"""

from __future__ import annotations

import contextlib

import torch
import triton
from torch import Tensor

from .object_prior_add_jit import _box_grad_rows_kernel, _object_prior_add_bwd_kernel, _object_prior_add_fwd_kernel

# Spread below which a CAM counts as constant (its prior is zero); the reference uses the same value.
EPS = 1e-6
# Largest Hb * Wb the kernels hold in registers; bigger box maps go to the reference backend.
MAX_CAM_SIZE = 1024


def _on(device: torch.device):
    """The launch context: Triton launches on the current CUDA device (and its stream), not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised memory for what the kernels write in full (the tests poison it to see unwritten elements)."""
    return torch.empty(*shape, dtype=dtype, device=device)


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


def _launch_forward(mf: Tensor | None, out: Tensor, cam: Tensor, prior: Tensor | None, box_features: Tensor,
                    cls_weight: Tensor, classes: Tensor, rows: Tensor | None, normalize: bool, scale_value: float,
                    scale: Tensor | None, D: int, Hm: int, Wm: int) -> None:
    """One forward launch over R = len(classes) RoIs: out (R, D, Hm, Wm) = mf + scale * resize(prior), or the map
    alone when `mf` is None (nothing read); the raw CAM into `cam`, the unresized prior into `prior` when given."""
    R = classes.shape[0]
    if R == 0:
        return
    N, C, Hb, Wb = box_features.shape
    bf, w, cls = box_features.contiguous(), cls_weight.contiguous(), classes.contiguous()
    rows_t = cls if rows is None else rows.contiguous()
    scale_t, s_val = _scale_args(scale_value, scale, cls)
    with _on(out.device):
        _object_prior_add_fwd_kernel[(R,)](
            out if mf is None else mf, bf, w, cls, rows_t, scale_t, out, cam, cam if prior is None else prior,
            s_val, Hb / Hm, Wb / Wm, EPS, D=D, C=C, P=Hb * Wb, Q=Hm * Wm, Hb=Hb, Wb=Wb, Wm=Wm,
            HAS_ROWS=rows is not None, SCALE_PTR=scale is not None, NORMALIZE=normalize, READ_MF=mf is not None,
            STORE_PRIOR=prior is not None, **_blocks(C, Hb * Wb, Hm * Wm, D), num_warps=4,
        )


def object_prior_add_forward(mask_features: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                             rows: Tensor | None, normalize: bool, scale_value: float, scale: Tensor | None,
                             out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Launch the forward: returns (out Tensor[R, D, Hm, Wm], raw cam Tensor[R, Hb * Wb] float32).

    Inputs must already be validated (shapes, index ranges). `out` may be `mask_features` itself (in place); it must
    be contiguous. Non-contiguous inputs are copied to contiguous ones here: the kernel assumes contiguous strides.
    """
    R, D, Hm, Wm = mask_features.shape
    Hb, Wb = box_features.shape[-2:]
    mf = mask_features.contiguous()
    if out is None:
        out = _empty(*mf.shape, dtype=mf.dtype, device=mf.device)
    assert out.is_contiguous() and out.shape == mf.shape
    cam = _empty(R, Hb * Wb, dtype=torch.float32, device=mf.device)
    _launch_forward(mf, out, cam, None, box_features, cls_weight, classes, rows, normalize, scale_value, scale, D, Hm,
                    Wm)
    return out, cam


def object_prior_forward(box_features: Tensor, cls_weight: Tensor, classes: Tensor, rows: Tensor | None,
                         size: tuple[int, int], normalize: bool, scale_value: float, scale: Tensor | None,
                         with_prior: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """The prior alone in one launch: returns (map Tensor[R, Hm, Wm] = scale * resize(prior) in the box features'
    dtype, the prior itself Tensor[R, Hb * Wb] (normalised, unscaled, unresized; only `with_prior`, else None), raw
    cam Tensor[R, Hb * Wb] float32). The forward kernel with one mask channel that it does not read."""
    R = classes.shape[0]
    Hb, Wb = box_features.shape[-2:]
    Hm, Wm = size
    dev, dtype = box_features.device, box_features.dtype
    out = _empty(R, Hm, Wm, dtype=dtype, device=dev)
    cam = _empty(R, Hb * Wb, dtype=torch.float32, device=dev)
    prior = _empty(R, Hb * Wb, dtype=dtype, device=dev) if with_prior else None
    _launch_forward(None, out, cam, prior, box_features, cls_weight, classes, rows, normalize, scale_value, scale, 1,
                    Hm, Wm)
    return out, prior, cam


def object_prior_add_backward(grad_out: Tensor, box_features: Tensor, cls_weight: Tensor, classes: Tensor,
                              rows: Tensor | None, cam: Tensor, normalize: bool, scale_value: float,
                              scale: Tensor | None, needs: tuple[bool, bool, bool]
                              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Launch the backward: grads of (box_features, cls_weight, scale), each None unless asked in `needs`."""
    R, D, Hm, Wm = grad_out.shape
    N, C, Hb, Wb = box_features.shape
    need_bf, need_w, need_s = needs
    dev = grad_out.device
    # Without rows RoI r owns row r and stores its gradient directly (rows past R, if any, get zeros). With rows (which
    # may repeat: several detections of one proposal) the RoIs' g_cam go to a small R x P buffer and a second kernel
    # writes every row once.
    gbf = gw = gs = gcam = None
    if need_bf:
        if rows is not None:
            gcam = _empty(R, Hb * Wb, dtype=torch.float32, device=dev)
            gbf = _empty(N, C, Hb, Wb, dtype=box_features.dtype, device=dev)
        elif N > R:
            gbf = torch.zeros(N, C, Hb, Wb, dtype=box_features.dtype, device=dev)
        else:
            gbf = _empty(N, C, Hb, Wb, dtype=box_features.dtype, device=dev)
    if need_w:
        gw = torch.zeros(cls_weight.shape, dtype=torch.float32, device=dev)
    if need_s:
        gs = _empty(R, dtype=torch.float32, device=dev)
    if R > 0 and any(needs):
        go = grad_out.contiguous()
        cls = classes.contiguous()
        w = cls_weight.contiguous()
        rows_t = cls if rows is None else rows.contiguous()
        scale_t, s_val = _scale_args(scale_value, scale, cls)
        bf = box_features.contiguous() if need_w else cam  # read only for the weight's gradient: copy only then
        blocks = _blocks(C, Hb * Wb, Hm * Wm, D)
        with _on(dev):
            _object_prior_add_bwd_kernel[(R,)](
                go, bf, w, cls, rows_t, scale_t, cam.contiguous(),
                next(t for t in (gcam, gbf, cam) if t is not None), gw if gw is not None else cam,
                gs if gs is not None else cam,
                s_val, Hb / Hm, Wb / Wm, EPS, D=D, C=C, P=Hb * Wb, Q=Hm * Wm, Hb=Hb, Wb=Wb, Wm=Wm,
                HAS_ROWS=rows is not None, SCALE_PTR=scale is not None, NORMALIZE=normalize,
                NEED_BF=need_bf, NEED_W=need_w, NEED_S=need_s, **blocks, num_warps=4,
            )
            if gcam is not None:
                # RoIs grouped by row on the device (no host sync): row n's RoIs are order[start[n]:start[n + 1]].
                order = torch.argsort(rows_t, stable=True)
                start = torch.searchsorted(rows_t[order], torch.arange(N + 1, device=dev, dtype=rows_t.dtype))
                _box_grad_rows_kernel[(N,)](gcam, w, cls, order, start, gbf, C=C, P=Hb * Wb,
                                            BLOCK_C=blocks["BLOCK_C"], BLOCK_P=blocks["BLOCK_P"], num_warps=4)
    elif gcam is not None:
        gbf.zero_()  # no RoI: nothing reads any row
    if gw is not None:
        gw = gw.to(cls_weight.dtype)
    if gs is not None:
        gs = gs.sum().reshape(1)
    return gbf, gw, gs
