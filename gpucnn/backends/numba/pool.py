"""Pooling kernels: max pooling (with argmax indices) and average pooling, forward and backward.

Kernels (kernels/pool.cu's names): `max_pool_fwd`, `max_pool_bwd`, `avg_pool_fwd`, `avg_pool_bwd`.

Arrays are (N, C, H, W) viewed as (planes, H, W) with planes = N*C
(`gpucnn.shapes.pool_geometry`, as the CuPy launchers); windows are kh x kw
with stride (sh, sw), no padding, floor (the output P x Q comes resolved from
gpucnn.functional). One thread per output element, grid-stride loop, geometry
from `_common.grid_1d` computed once per launch.

Max pooling records, per output, the flat index h*W+w of the first maximum of
its window in row-major window order (PyTorch's rule, the NumPy backend's
indices; a window holding NaN gives NaN at its last NaN). Both backwards are
gathers, not scatters: one thread per input element sums dy over the windows
that contain it (those with oh*sh <= h < oh*sh + kh and likewise for w), so
there are no atomics and the result is deterministic. Max pooling's backward
takes a window's dy only when that window's recorded index is this element; an
index outside its window (not max_pool2d's) is recorded on the device
(`index_errors`), never read back by the launcher.

Float32 discipline: accumulators start from a zero of the array's own dtype
(`dx.dtype.type(0)`), and avg pooling's 1/(kh*kw) is computed on the host in
the array's dtype and passed in.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, int64

from ... import shapes
from .._base import register
from . import _common

B = "numba"


# --------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def max_pool_fwd(x, y, idx, kh, kw, sh, sw):
    """y[p, oh, ow] = max of the kh x kw window at (oh*sh, ow*sw) of x[p]; idx = its flat h*W+w.

    The window is scanned in row-major order and only a strictly larger value,
    or a NaN, replaces the running maximum (PyTorch's rule): ties keep the first
    position, a window holding NaN gives NaN at its last NaN.
    """
    planes, ph, qw = y.shape
    width = x.shape[2]
    start = cuda.grid(1)
    for t in range(start, planes * ph * qw, cuda.gridsize(1)):
        ow = t % qw
        oh = (t // qw) % ph
        p = t // (qw * ph)
        h0 = oh * sh
        w0 = ow * sw
        best = x[p, h0, w0]
        best_h = h0
        best_w = w0
        for i in range(kh):
            for j in range(kw):
                v = x[p, h0 + i, w0 + j]
                if v > best or math.isnan(v):
                    best = v
                    best_h = h0 + i
                    best_w = w0 + j
        y[p, oh, ow] = best
        idx[p, oh, ow] = best_h * width + best_w


@cuda.jit(cache=True)
def max_pool_bwd(dy, idx, dx, err, kh, kw, sh, sw):
    """dx[p, h, w] = sum of dy[p, oh, ow] over the windows containing (h, w) whose idx is h*W+w.

    Windows containing row h: oh from ceil((h - kh + 1) / sh) (at least 0) to
    floor(h / sh) (at most P-1); columns likewise. Summed in row-major window order.
    The element at a window's corner (oh*sh, ow*sw) checks that window's index: one
    outside the window reaches no element and goes into `err` (_INDICES).
    """
    planes, height, width = dx.shape
    ph, qw = dy.shape[1], dy.shape[2]
    start = cuda.grid(1)
    for t in range(start, planes * height * width, cuda.gridsize(1)):
        w = t % width
        h = (t // width) % height
        p = t // (width * height)
        here = h * width + w
        acc = dx.dtype.type(0)
        for oh in range((max(h - kh + 1, 0) + sh - 1) // sh, min(h // sh, ph - 1) + 1):
            for ow in range((max(w - kw + 1, 0) + sw - 1) // sw, min(w // sw, qw - 1) + 1):
                if idx[p, oh, ow] == here:
                    acc += dy[p, oh, ow]
        dx[p, h, w] = acc
        oh = h // sh
        ow = w // sw
        if oh * sh == h and ow * sw == w and oh < ph and ow < qw:  # (h, w) is window (oh, ow)'s corner
            d = int64(idx[p, oh, ow]) - here  # (i, j) = divmod(d, W) must lie in the window
            if d < 0 or d // width >= kh or d % width >= kw:
                if cuda.atomic.cas(err, 0, -1, (p * ph + oh) * qw + ow) == -1:
                    err[1] = idx[p, oh, ow]


@cuda.jit(cache=True)
def avg_pool_fwd(x, y, kh, kw, sh, sw, inv_area):
    """y[p, oh, ow] = (sum of the kh x kw window at (oh*sh, ow*sw) of x[p]) * inv_area.

    inv_area = 1/(kh*kw) in x's dtype, computed on the host.
    """
    planes, ph, qw = y.shape
    start = cuda.grid(1)
    for t in range(start, planes * ph * qw, cuda.gridsize(1)):
        ow = t % qw
        oh = (t // qw) % ph
        p = t // (qw * ph)
        h0 = oh * sh
        w0 = ow * sw
        acc = y.dtype.type(0)
        for i in range(kh):
            for j in range(kw):
                acc += x[p, h0 + i, w0 + j]
        y[p, oh, ow] = acc * inv_area


@cuda.jit(cache=True)
def avg_pool_bwd(dy, dx, kh, kw, sh, sw, inv_area):
    """dx[p, h, w] = (sum of dy[p, oh, ow] over the windows containing (h, w)) * inv_area.

    Elements no window covers (the floor's leftover rows and columns) get 0.
    """
    planes, height, width = dx.shape
    ph, qw = dy.shape[1], dy.shape[2]
    start = cuda.grid(1)
    for t in range(start, planes * height * width, cuda.gridsize(1)):
        w = t % width
        h = (t // width) % height
        p = t // (width * height)
        acc = dx.dtype.type(0)
        for oh in range((max(h - kh + 1, 0) + sh - 1) // sh, min(h // sh, ph - 1) + 1):
            for ow in range((max(w - kw + 1, 0) + sw - 1) // sw, min(w // sw, qw - 1) + 1):
                acc += dy[p, oh, ow]
        dx[p, h, w] = acc * inv_area


# --------------------------------------------------------------------------- launchers

def _views(x_shape, out_shape, kernel, stride):
    """(input plane shape, output plane shape, kernel arguments kh, kw, sh, sw): contiguous (N, C, H, W)
    device arrays are reshaped (no copy) to (planes, H, W) and (planes, P, Q)."""
    planes, h, w, p, q, *args = shapes.pool_geometry(x_shape, out_shape, kernel, stride)
    return (planes, h, w), (planes, p, q), args


def _inv_area(kernel, dtype):
    """1/(kh*kw) in the arrays' dtype (a kernel argument: no float64 constant in float32 kernels)."""
    dt = np.dtype(dtype).type
    return dt(1) / dt(kernel[0] * kernel[1])


@register("max_pool2d", B)
def max_pool2d(x, kernel, stride, out_shape):
    x = _common.device(x)
    y = _common.empty(out_shape, x.dtype)
    idx = _common.empty(out_shape, np.int64)
    xs, ys, args = _views(x.shape, out_shape, kernel, stride)
    max_pool_fwd[_common.grid_1d(y.size)](x.reshape(xs), y.reshape(ys), idx.reshape(ys), *args)
    return y, idx


# The device's record of max-pool indices outside their window: err[0] the first one's output position,
# flat over (planes, P, Q) (-1: none), err[1] the index
_INDICES = _common.ErrorRecord(np.array([-1, 0], np.int64))


@register("index_errors", B)
def index_errors(reset=True):
    """None, or (output position, index) of the first max-pool index outside its window since the last reset."""
    at, index = _INDICES.read(reset)
    return None if at < 0 else (at, index)


@register("max_pool2d_backward", B)
def max_pool2d_backward(dy, x, kernel, stride, indices):
    dy, x = _common.device(dy), _common.device(x)
    if indices is None:  # recompute the argmax with the forward kernel
        _, indices = max_pool2d(x, kernel, stride, dy.shape)
    else:
        indices = _common.device(indices)
    dx = _common.empty(x.shape, x.dtype)
    if dx.size:
        xs, ys, args = _views(x.shape, dy.shape, kernel, stride)
        max_pool_bwd[_common.grid_1d(dx.size)](dy.reshape(ys), indices.reshape(ys), dx.reshape(xs), _INDICES.array(),
                                               *args)
    return dx


@register("avg_pool2d", B)
def avg_pool2d(x, kernel, stride, out_shape):
    x = _common.device(x)
    y = _common.empty(out_shape, x.dtype)
    xs, ys, args = _views(x.shape, out_shape, kernel, stride)
    avg_pool_fwd[_common.grid_1d(y.size)](x.reshape(xs), y.reshape(ys), *args, _inv_area(kernel, x.dtype))
    return y


@register("avg_pool2d_backward", B)
def avg_pool2d_backward(dy, x, kernel, stride):
    dy = _common.device(dy)
    dx = _common.empty(x.shape, dy.dtype)
    xs, ys, args = _views(x.shape, dy.shape, kernel, stride)
    avg_pool_bwd[_common.grid_1d(dx.size)](dy.reshape(ys), dx.reshape(xs), *args, _inv_area(kernel, dy.dtype))
    return dx


@register("relu_max_pool2d", B)
def relu_max_pool2d(x, kernel, stride, out_shape):
    """max_pool2d(relu(x)); composed of the two kernels here (the cupy backend fuses them)."""
    from .elementwise import relu
    return max_pool2d(relu(x), kernel, stride, out_shape)
