"""Launchers for kernels/conv.cu: convolution forward, data, weight and bias gradients (implicit GEMM).

Tile shape, split-K and vector width are chosen here, from the problem's GEMM
sizes (_runtime.gemm_tile / gemm_splits); the math mode (exact FP32 or TF32
tensor cores) from gpucnn.config.allow_tf32.
"""
from __future__ import annotations

from .._base import register
from . import _runtime as rt

B = "cupy"
_BOOL = ("false", "true")
K = rt.Family("conv", [f"conv2d_fwd<{bm}, {bn}, {tf}, {v}>" for bm, bn in rt.GEMM_TILES for tf in _BOOL for v in _BOOL]
              + [f"conv2d_{d}<{bm}, {bn}, {tf}>" for d in ("dgrad", "wgrad") for bm, bn in rt.GEMM_TILES for tf in _BOOL]
              + ["splitk_reduce", "conv2d_bias_grad"])


def _dims(x_shape, w_shape, out_shape, stride, pads):
    n, c, h, w = x_shape
    k, _, r, s = w_shape
    p, q = out_shape[2:]
    return tuple(rt.i32(v) for v in (n, c, h, w, k, r, s, p, q, stride[0], stride[1], pads[0], pads[2]))


def _forward(op, x, w, b, stride, pads, out_shape, relu):
    x, w, b = rt.operand(op, "x", x), rt.operand(op, "w", w), rt.operand(op, "b", b)
    y = rt.empty(out_shape)
    if y.size == 0:
        return y
    m, n, kk = out_shape[0] * out_shape[2] * out_shape[3], w.shape[0], w[0].size
    bm, bn = rt.gemm_tile(m, n)
    vec = "true" if kk % 4 == 0 and rt.aligned(w) else "false"
    K.launch(f"conv2d_fwd<{bm}, {bn}, {rt.math_mode()}, {vec}>", (rt.ceil_div(m, bm), rt.ceil_div(n, bn)),
             (rt.THREADS,), (x, w, rt.ptr(b), y, rt.i32(relu), *_dims(x.shape, w.shape, out_shape, stride, pads)))
    return y


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    return _forward("conv2d", x, w, b, stride, pads, out_shape, relu=False)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    return _forward("conv2d_relu", x, w, b, stride, pads, out_shape, relu=True)


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads, input_grad=True, relu_mask=False):
    """(dx, dw, db). relu_mask: x came out of a ReLU, so dx is zeroed where x <= 0 (the ReLU's backward, fused)."""
    op = "conv2d_backward"
    dy, x, w = rt.operand(op, "dy", dy), rt.operand(op, "x", x), rt.operand(op, "w", w)
    dims = _dims(x.shape, w.shape, dy.shape, stride, pads)
    nimg, c, h, wd = x.shape
    kf = w.shape[0]
    pq = dy.shape[2] * dy.shape[3]
    mode = rt.math_mode()

    db = rt.empty((kf,))
    dw = rt.empty(w.shape)
    dx = rt.empty(x.shape) if input_grad else None
    if dy.size == 0 or x.size == 0:  # an empty batch: zero gradients
        for g in (db, dw, dx):
            if g is not None:
                g.fill(0)
        return dx, dw, db

    # bias gradient: K blocks, times enough image groups to give every SM two blocks, reduced after
    groups = max(1, min(nimg, rt.ceil_div(2 * rt.sm_count(), kf), 65535))
    part = db if groups == 1 else rt.empty((groups, kf))
    K.launch("conv2d_bias_grad", (kf, groups), (rt.THREADS,), (dy, part, rt.i32(nimg), rt.i32(kf), rt.i32(pq)))
    if groups > 1:
        K.launch("splitk_reduce", *rt.grid_1d(kf), (part, db, rt.i32(kf), rt.i32(groups)))

    m, n, kk = w[0].size, kf, nimg * pq  # weight gradient: M = C*R*S, N = K, K = N*P*Q
    bm, bn = rt.gemm_tile(m, n)
    splits, per = rt.gemm_splits(m, n, kk, bm, bn)
    ws = dw if splits == 1 else rt.empty((splits,) + w.shape)
    K.launch(f"conv2d_wgrad<{bm}, {bn}, {mode}>", (rt.ceil_div(m, bm), rt.ceil_div(n, bn), splits), (rt.THREADS,),
             (x, dy, ws, rt.i32(per), *dims))
    if splits > 1:
        K.launch("splitk_reduce", *rt.grid_1d(dw.size), (ws, dw, rt.i32(dw.size), rt.i32(splits)))

    if input_grad:
        m, n = nimg * h * wd, c  # data gradient: M = N*H*W, N = C, K = K*R*S
        bm, bn = rt.gemm_tile(m, n)
        K.launch(f"conv2d_dgrad<{bm}, {bn}, {mode}>", (rt.ceil_div(m, bm), rt.ceil_div(n, bn)), (rt.THREADS,),
                 (dy, w, x if relu_mask else rt.NULL, dx, *dims))
    return dx, dw, db
