"""Launchers for kernels/dense.cu: the linear layer and its gradients (GEMMs on gemm.cuh)."""
from __future__ import annotations

from .._base import register
from . import _runtime as rt

B = "cupy"
_BOOL = ("false", "true")
K = rt.Family("dense", [f"linear_{d}<{bm}, {bn}, {tf}, {_BOOL[vec]}>" for d in ("fwd", "dgrad", "wgrad")
                        for vec in (False, True) for tf in _BOOL for bm, bn in rt.gemm_tiles(vec, tf)]
              + ["splitk_reduce", "splitk_epilogue", "linear_bias_grad"])


def _vec(*arrays, sizes=()) -> str:
    """16-byte loads: every contiguous size a multiple of 4 floats, every array 16-byte aligned."""
    return _BOOL[all(v % 4 == 0 for v in sizes) and rt.aligned(*arrays)]


def _launch(name, m, n, k, args, out, after, epilogue=None):
    """One linear GEMM (C = M x N, K) into `out`, split over K when the plan says so (partials, then
    splitk_reduce, or splitk_epilogue with the forward's bias and ReLU)."""
    mode, vec = (a.strip(" >") for a in name.split(",")[-2:])  # linear_*<{bm}, {bn}, TF32, VEC4>
    bm, bn, splits, per = rt.gemm_plan(m, n, k, rt.gemm_tiles(vec == "true", mode))
    target = out if splits == 1 else rt.empty((splits,) + out.shape)
    K.launch(name.format(bm=bm, bn=bn), (rt.ceil_div(m, bm), rt.ceil_div(n, bn), splits), rt.gemm_threads(bm, bn),
             (*args, target, *after(per)))
    if splits > 1:
        if epilogue is None:
            K.launch("splitk_reduce", *rt.grid_1d(out.size), (target, out, rt.i32(out.size), rt.i32(splits)))
        else:
            bias, relu = epilogue
            K.launch("splitk_epilogue", *rt.grid_1d(out.size),
                     (target, out, rt.i32(out.size), rt.i32(splits), bias, rt.i32(1), rt.i32(m), rt.i32(relu), rt.NULL))


def _linear(op, x, w, b, out_shape, relu):
    x, w, b = rt.operand(op, "x", x), rt.operand(op, "w", w), rt.operand(op, "b", b)
    y = rt.empty(out_shape)
    if y.size == 0:
        return y
    nb, i = x.shape
    o = w.shape[0]
    if i == 0:  # no input features: the epilogue of an empty sum (the bias, ReLU'd), no GEMM
        K.launch("splitk_epilogue", *rt.grid_1d(y.size),
                 (rt.NULL, y, rt.i32(y.size), rt.i32(0), rt.ptr(b), rt.i32(1), rt.i32(o), rt.i32(relu), rt.NULL))
        return y
    sizes = (nb, i, o)
    _launch(f"linear_fwd<{{bm}}, {{bn}}, {rt.math_mode()}, {_vec(x, w, sizes=(i,))}>", o, nb, i,
            (x, w, rt.ptr(b)), y, lambda per: (rt.i32(relu), rt.i32(per), *(rt.i32(v) for v in sizes)),
            (rt.ptr(b), relu))
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
    if nb == 0 or o == 0:  # no batch or no outputs: zero gradients
        for g in (dx, dw, db):
            g.fill(0)
        return dx, dw, db
    if i == 0:
        return dx, dw, _bias(dy, db)
    _bias(dy, db)
    sizes = tuple(rt.i32(v) for v in (nb, i, o))
    vec = _vec(dy, w, x, sizes=(i, o))
    _launch(f"linear_dgrad<{{bm}}, {{bn}}, {mode}, {vec}>", i, nb, o, (dy, w), dx,  # C = dx^T: M = in, N = batch
            lambda per: (rt.i32(per), *sizes))
    _launch(f"linear_wgrad<{{bm}}, {{bn}}, {mode}, {vec}>", i, o, nb, (x, dy), dw,  # C = dw^T: M = in, N = out
            lambda per: (rt.i32(per), *sizes))
    return dx, dw, db


def _bias(dy, db):
    if db.size:
        K.launch("linear_bias_grad", *rt.grid_1d(db.size), (dy, db, rt.i32(dy.shape[0]), rt.i32(db.size)))
    return db
