"""Launchers for kernels/dense.cu: the linear layer and its gradients (GEMMs on gemm.cuh)."""
from __future__ import annotations

from .._base import register
from . import _runtime as rt

B = "cupy"
_BOOL = ("false", "true")
K = rt.Family("dense", [f"linear_{d}<{bm}, {bn}, {tf}, {v}>" for d in ("fwd", "dgrad") for bm, bn in rt.GEMM_TILES
                        for tf in _BOOL for v in _BOOL]
              + [f"linear_wgrad<{bm}, {bn}, {tf}>" for bm, bn in rt.GEMM_TILES for tf in _BOOL]
              + ["splitk_reduce", "linear_bias_grad"])


def _vec(k, a) -> str:
    return "true" if k % 4 == 0 and rt.aligned(a) else "false"


def _linear(op, x, w, b, out_shape, relu):
    x, w, b = rt.operand(op, "x", x), rt.operand(op, "w", w), rt.operand(op, "b", b)
    y = rt.empty(out_shape)
    if y.size == 0:
        return y
    nb, i = x.shape
    o = w.shape[0]
    bm, bn = rt.gemm_tile(o, nb)  # C = y^T: M = out, N = batch, K = in
    K.launch(f"linear_fwd<{bm}, {bn}, {rt.math_mode()}, {_vec(i, x)}>", (rt.ceil_div(o, bm), rt.ceil_div(nb, bn)),
             (rt.THREADS,), (x, w, rt.ptr(b), y, rt.i32(relu), rt.i32(nb), rt.i32(i), rt.i32(o)))
    return y


@register("linear", B)
def linear(x, w, b, out_shape):
    return _linear("linear", x, w, b, out_shape, relu=False)


@register("linear_backward", B)
def linear_backward(dy, x, w):
    op = "linear_backward"
    dy, x, w = rt.operand(op, "dy", dy), rt.operand(op, "x", x), rt.operand(op, "w", w)
    nb, i = x.shape
    o = w.shape[0]
    mode = rt.math_mode()
    dx, dw, db = rt.empty(x.shape), rt.empty(w.shape), rt.empty((o,))
    if nb == 0:
        for g in (dx, dw, db):
            g.fill(0)
        return dx, dw, db
    if i == 0:
        return dx, dw, db if o == 0 else _bias(dy, db)
    _bias(dy, db)
    bm, bn = rt.gemm_tile(i, nb)  # C = dx^T: M = in, N = batch, K = out
    K.launch(f"linear_dgrad<{bm}, {bn}, {mode}, {_vec(o, dy)}>", (rt.ceil_div(i, bm), rt.ceil_div(nb, bn)),
             (rt.THREADS,), (dy, w, dx, rt.i32(nb), rt.i32(i), rt.i32(o)))
    bm, bn = rt.gemm_tile(i, o)  # C = dw^T: M = in, N = out, K = batch
    splits, per = rt.gemm_splits(i, o, nb, bm, bn)
    ws = dw if splits == 1 else rt.empty((splits,) + w.shape)
    K.launch(f"linear_wgrad<{bm}, {bn}, {mode}>", (rt.ceil_div(i, bm), rt.ceil_div(o, bn), splits), (rt.THREADS,),
             (x, dy, ws, rt.i32(per), rt.i32(nb), rt.i32(i), rt.i32(o)))
    if splits > 1:
        K.launch("splitk_reduce", *rt.grid_1d(dw.size), (ws, dw, rt.i32(dw.size), rt.i32(splits)))
    return dx, dw, db


def _bias(dy, db):
    if db.size:
        K.launch("linear_bias_grad", *rt.grid_1d(db.size), (dy, db, rt.i32(dy.shape[0]), rt.i32(db.size)))
    return db
