"""Launchers for kernels/pool.cu: max pooling (int64 indices), the fused relu_max_pool2d, average pooling.

Each kernel gets (planes = N*C, H, W, P, Q, kh, kw, sh, sw) and one thread per output element
(forward) or input element (backward), grid from `rt.grid_1d`; the max-pool backward of windows that
do not overlap (stride >= window in both dimensions: the 2x2 stride-2 pools of the zoo models) runs
one thread per pooled output instead (``max_pool_bwd_disjoint``, a 3-D grid from `_disjoint_grid`).
Max-pool indices are int64 flat positions h*W+w within the input plane, as the NumPy and Numba
backends return them; the backward also takes int32 indices as they are (other integer types are
converted once to int64). An index outside its own window (not max_pool2d's) gets no gradient and is
recorded on the device (`index_errors`), never read back by a launcher.
"""
from __future__ import annotations

import numpy as np

from ... import shapes
from .._base import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("pool", ["max_pool_fwd<false>", "max_pool_fwd<true>", "max_pool_bwd<long long>", "max_pool_bwd<int>",
                       "max_pool_bwd_disjoint<long long>", "max_pool_bwd_disjoint<int>",
                       "avg_pool_fwd", "avg_pool_bwd"])
MAX_GRID_YZ = 65535  # gridDim.y and gridDim.z
MAX_BLOCK_Z = 64     # blockDim.z


def _geometry(x_shape, out_shape, kernel, stride):
    """The kernels' integer arguments: planes, H, W, P, Q, kh, kw, sh, sw."""
    return tuple(rt.i32(v) for v in shapes.pool_geometry(x_shape, out_shape, kernel, stride))


def _disjoint_grid(planes, p, q):
    """(grid, block) of max_pool_bwd_disjoint: threads x over the Q outputs of a row, y over the P rows,
    z over planes, about rt.THREADS a block; a block of consecutive (oh, ow) of whole rows reads dy and
    the indices contiguously. y and z are grid-stride loops in the kernel, so their grid is capped."""
    bx = min(q, rt.THREADS)
    by = min(p, max(1, rt.THREADS // bx))
    bz = min(planes, max(1, rt.THREADS // (bx * by)), MAX_BLOCK_Z)
    grid = (rt.ceil_div(q, bx), min(rt.ceil_div(p, by), MAX_GRID_YZ), min(rt.ceil_div(planes, bz), MAX_GRID_YZ))
    return grid, (bx, by, bz)


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
        geometry = _geometry(x.shape, dy.shape, kernel, stride)
        planes, _, _, p, q, kh, kw, sh, sw = (int(v) for v in geometry)
        args = (dy, indices, dx, _INDICES.array(), *geometry)
        if sh >= kh and sw >= kw:  # no element in two windows: one thread per window writes its cell of dx
            K.launch(f"max_pool_bwd_disjoint<{rt.c_type(indices.dtype)}>", *_disjoint_grid(planes, p, q), args)
        else:
            K.launch(f"max_pool_bwd<{rt.c_type(indices.dtype)}>", *rt.grid_1d(dx.size), args)
    return dx


# kernels/pool.cu's POOL_ERR_*: the first bad index's output position (-1: none), the index
_INDICES = rt.ErrorRecord([-1, 0])


@register("index_errors", B)
def index_errors(reset=True):
    """None, or (output position, index) of the first max-pool index outside its window since the last
    reset. One device-to-host read."""
    at, index = _INDICES.read(reset)
    return None if at < 0 else (at, index)


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
