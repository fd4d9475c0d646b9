"""Launchers for kernels/pool.cu: max pooling (int64 indices), the fused relu_max_pool2d, average pooling.

Each kernel gets (planes = N*C, H, W, P, Q, kh, kw, sh, sw) and one thread per output element
(forward) or input element (backward), grid from `rt.grid_1d`. Max-pool indices are int64 flat
positions h*W+w within the input plane, as the NumPy and Numba backends return them; the backward
also takes int32 indices as they are (other integer types are converted once to int64).
"""
from __future__ import annotations

import numpy as np

from ... import shapes
from .._base import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("pool", ["max_pool_fwd<false>", "max_pool_fwd<true>", "max_pool_bwd<long long>", "max_pool_bwd<int>",
                       "avg_pool_fwd", "avg_pool_bwd"])


def _geometry(x_shape, out_shape, kernel, stride):
    """The kernels' integer arguments: planes, H, W, P, Q, kh, kw, sh, sw."""
    return tuple(rt.i32(v) for v in shapes.pool_geometry(x_shape, out_shape, kernel, stride))


def _max_pool(op, x, kernel, stride, out_shape, relu):
    x = rt.operand(op, "x", x)
    y = rt.empty(out_shape)
    idx = rt.empty(out_shape, np.int64)
    if y.size:
        K.launch(f"max_pool_fwd<{'true' if relu else 'false'}>", *rt.grid_1d(y.size),
                 (x, y, idx, *_geometry(x.shape, out_shape, kernel, stride)))
    return y, idx


@register("max_pool2d", B)
def max_pool2d(x, kernel, stride, out_shape):
    return _max_pool("max_pool2d", x, kernel, stride, out_shape, relu=False)


@register("relu_max_pool2d", B)
def relu_max_pool2d(x, kernel, stride, out_shape):
    """max_pool2d(relu(x)) in one pass (y and indices exactly those of the unfused pair)."""
    return _max_pool("relu_max_pool2d", x, kernel, stride, out_shape, relu=True)


@register("max_pool2d_backward", B)
def max_pool2d_backward(dy, x, kernel, stride, indices):
    dy = rt.operand("max_pool2d_backward", "dy", dy)
    x = rt.operand("max_pool2d_backward", "x", x)
    if indices is None:  # recompute the argmax with the forward kernel
        _, indices = max_pool2d(x, kernel, stride, dy.shape)
    indices = rt.int_operand("max_pool2d_backward", "indices", indices)
    dx = rt.empty(x.shape)
    if dx.size:
        K.launch(f"max_pool_bwd<{rt.c_type(indices.dtype)}>", *rt.grid_1d(dx.size),
                 (dy, indices, dx, *_geometry(x.shape, dy.shape, kernel, stride)))
    return dx


@register("avg_pool2d", B)
def avg_pool2d(x, kernel, stride, out_shape):
    x = rt.operand("avg_pool2d", "x", x)
    y = rt.empty(out_shape)
    if y.size:
        K.launch("avg_pool_fwd", *rt.grid_1d(y.size), (x, y, *_geometry(x.shape, out_shape, kernel, stride)))
    return y


@register("avg_pool2d_backward", B)
def avg_pool2d_backward(dy, x, kernel, stride):
    dy = rt.operand("avg_pool2d_backward", "dy", dy)
    x = rt.operand("avg_pool2d_backward", "x", x)  # only its shape is used; checked all the same
    dx = rt.empty(x.shape)
    if dx.size:
        K.launch("avg_pool_bwd", *rt.grid_1d(dx.size), (dy, dx, *_geometry(x.shape, dy.shape, kernel, stride)))
    return dx
