"""NumPy convolution: conv2d, conv2d_relu, conv2d_backward, and the im2col helpers they share.

The NumPy backend is the reference every kernel is checked against, and the CPU
fallback. No Python loops over pixels or channels. Convolution forward, data gradient
and weight gradient are each one im2col (a copy per kernel offset, R*S slices)
plus one BLAS matrix product; pooling works on strided window views. Arguments
arrive already checked and resolved by `gpucnn.functional`; dtype is kept
(float32, or float64 for gradient checks).

Speed notes (2 cores, OpenBLAS, cifar10_vgg at batch 64; see README): the
matrix products take about half of a training step. Tried and measured slower
here, so not kept: Winograd F(2x2, 3x3) written with NumPy (its tile
transforms cost more than the multiplications they save), and running batch
chunks on two threads with single-threaded BLAS. Chunk sizes from 1 to 64 MB
made no difference beyond run-to-run noise.
"""
from __future__ import annotations

import threading

import numpy as np

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- convolution
#
# im2col works on "planes": the input transposed to (C, N, H, W) and zero-padded,
# so that for stride-1 rows every kernel offset (i, j) reads one contiguous run of
# P full padded rows per plane (a near-memcpy copy). The product is then computed
# on padded-width rows and the extra columns are dropped. The batch is processed
# in chunks whose columns fit in cache, so each chunk's im2col is still hot when
# its matrix product runs.

_CHUNK_BYTES = 4 << 20
_workspace = threading.local()


def _scratch(name, shape, dtype, zero=False):
    """A reusable per-thread temporary (never returned to callers): fresh large arrays cost
    first-touch page faults on every call, reused ones do not."""
    size = int(np.prod(shape))
    pool = _workspace.__dict__
    buf = pool.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = pool[name] = np.empty(max(size, 1), dtype)
    view = buf[:size].reshape(shape)
    if zero:
        view.fill(0)
    return view


def _planes(x, pads, extra_rows=0, name="planes"):
    """x (N,C,H,W) as zero-padded planes (C, N, H+t+b+extra_rows, W+l+r); negative pads crop.

    The planes live in the workspace slot `name` until the next call that uses it."""
    t, b, l, r = pads
    x = x[:, :, max(0, -t): x.shape[2] - max(0, -b), max(0, -l): x.shape[3] - max(0, -r)]
    t, b, l, r = max(0, t), max(0, b), max(0, l), max(0, r)
    n, c, h, w = x.shape
    buf = _scratch(name, (c, n, h + t + b + extra_rows, w + l + r), x.dtype, zero=True)
    buf[:, :, t: t + h, l: l + w] = x.transpose(1, 0, 2, 3)
    return buf


def _row_width(planes, stride, q, exact=False):
    """Columns computed per output row: the padded width for stride-1 rows (extras dropped later), else Q.
    exact: Q always (the weight gradient of an input holding inf or NaN: an extra column's zero gradient
    times an infinity would be NaN)."""
    return planes.shape[3] if stride[1] == 1 and not exact else q


def _columns(planes, r, s, stride, p, q, buf, exact=False):
    """im2col into `buf`: cols[(c,i,j), (n,u,v)] = planes[c, n, u*sh + i, v*sw + j], shape (C*R*S, n*P*Qs)."""
    c, n, hb, wp = planes.shape
    sh, sw = stride
    qs = _row_width(planes, stride, q, exact)
    cols = buf[: c * r * s * n * p * qs].reshape(c, r, s, n, p, qs)
    if sw == 1 and not exact:  # needs sh spare rows at the bottom of each plane (see _planes' extra_rows)
        flat = planes.reshape(c, n, hb * wp)
        for i in range(r):
            for j in range(s):
                start = i * wp + j
                cols[:, i, j] = flat[:, :, start: start + p * sh * wp].reshape(c, n, p, sh * wp)[..., :wp]
    else:
        for i in range(r):
            for j in range(s):
                cols[:, i, j] = planes[:, :, i: i + sh * (p - 1) + 1: sh, j: j + sw * (q - 1) + 1: sw]
    return cols.reshape(c * r * s, n * p * qs)


def _column_chunks(planes, w, stride, p, q, exact=False):
    """im2col of the batch in chunks of about _CHUNK_BYTES, one buffer reused for all of them
    (fresh memory would page-fault on every chunk): yields (n0, n1, cols (C*R*S, (n1-n0)*P*Qs))."""
    c, n = planes.shape[:2]
    r, s = w.shape[2:]
    per_sample = w[0].size * p * _row_width(planes, stride, q, exact)
    step = max(1, min(n, _CHUNK_BYTES // (per_sample * planes.itemsize)))
    buf = _scratch("columns", (per_sample * step,), planes.dtype)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        yield n0, n1, _columns(planes[:, n0:n1], r, s, stride, p, q, buf, exact)


def _correlate(planes, w, stride, p, q):
    """Valid cross-correlation of planes with w (K,C,R,S), chunk by chunk.

    Yields (n0, n1, y): y (K, n1-n0, P, Qs) contiguous, valid in its first Q columns.
    """
    k = w.shape[0]
    w2 = w.reshape(k, -1)
    qs = _row_width(planes, stride, q)
    ybuf = None
    for n0, n1, cols in _column_chunks(planes, w, stride, p, q):
        if ybuf is None:
            ybuf = _scratch("product", (k * cols.shape[1],), planes.dtype)
        y = np.matmul(w2, cols, out=ybuf[: k * cols.shape[1]].reshape(k, cols.shape[1]))
        yield n0, n1, y.reshape(k, n1 - n0, p, qs)


# --------------------------------------------------------------------------- strides wider than the kernel
#
# A stride larger than the kernel leaves rows (columns) that no window reads. Gathering the rows the
# windows do read, window u's at u*R .. u*R+R-1, gives the same convolution with stride R and no padding
# on that axis, whose buffers scale with the output instead of with the stride (a stride of 2^40 on a
# 3x3 input is a 1x1 output, not a 2^40-row plane). Windows that do not overlap read each row once, so
# the data gradient goes back by plain assignment.

def _axis_sources(n, k, s, pad, out):
    """Source row of each gathered row (window u's rows u*s-pad .. +k-1), and which of them are real rows."""
    src = (np.arange(out)[:, None] * s + np.arange(k)[None, :] - pad).ravel()
    return src, (src >= 0) & (src < n)


def _compact(x, r, s, stride, pads, out_hw):
    """(x', stride', pads', sources): x gathered along every axis whose stride exceeds its kernel (then that
    axis has stride = kernel and no padding); sources[axis] = (src, valid) of a gathered axis, else None."""
    sources, stride, pads = [None, None], list(stride), list(pads)
    for axis, k in ((0, r), (1, s)):
        if stride[axis] <= k:
            continue
        src, valid = _axis_sources(x.shape[2 + axis], k, stride[axis], pads[2 * axis], out_hw[axis])
        shape = list(x.shape)
        shape[2 + axis] = src.size
        gathered = np.zeros(shape, x.dtype)
        at = (slice(None),) * (2 + axis) + (np.flatnonzero(valid),)
        gathered[at] = np.take(x, src[valid], axis=2 + axis)
        x, stride[axis], pads[2 * axis: 2 * axis + 2] = gathered, k, (0, 0)
        sources[axis] = (src, valid)
    return x, tuple(stride), tuple(pads), sources


def _scatter_back(dx, x_shape, sources):
    """The data gradient of a gathered input back in x's geometry (rows no window reads get 0)."""
    for axis in (0, 1):
        if sources[axis] is None:
            continue
        src, valid = sources[axis]
        shape = list(dx.shape)
        shape[2 + axis] = x_shape[2 + axis]
        out = np.zeros(shape, dx.dtype)
        at = (slice(None),) * (2 + axis)
        out[at + (src[valid],)] = dx[at + (np.flatnonzero(valid),)]
        dx = out
    return dx


def _conv2d(x, w, b, stride, pads, out_shape, relu):
    n, k, p, q = out_shape
    if n * k == 0 or w[0].size == 0:  # nothing to multiply: an empty output, or (no input channels) the bias
        out = np.zeros(out_shape, x.dtype)
        if b is not None:
            out += b[:, None, None]
        return np.maximum(out, 0, out=out) if relu else out
    x, stride, pads, _ = _compact(x, w.shape[2], w.shape[3], stride, pads, (p, q))
    out = np.empty(out_shape, x.dtype)
    for n0, n1, y in _correlate(_planes(x, pads, stride[0]), w, stride, p, q):
        if b is not None:  # the epilogue runs on the contiguous chunk, then one transposing copy
            y += b[:, None, None, None]
        if relu:
            np.maximum(y, 0, out=y)
        out[n0:n1] = y[..., :q].transpose(1, 0, 2, 3)
    return out


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    return _conv2d(x, w, b, stride, pads, out_shape, relu=False)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    return _conv2d(x, w, b, stride, pads, out_shape, relu=True)


def _weight_grad(dy, x, w, stride, pads):
    """dW (K, C*R*S) = dy (K, N*P*Q) @ cols(x)^T, accumulated over batch chunks. An x holding inf or NaN takes
    exact columns (no padded-width extras whose zero gradient would multiply it into NaN), so dw is the
    definition's sum, padding's zeros included (as PyTorch's)."""
    k = w.shape[0]
    _, _, p, q = dy.shape
    exact = stride[1] == 1 and not np.isfinite(x).all()  # only the padded-width rows multiply extra columns
    planes = _planes(x, pads, stride[0])
    qs = _row_width(planes, stride, q, exact)
    dw = np.zeros((k, w[0].size), dy.dtype)
    dy_wide = _scratch("dy_wide", (k, dy.shape[0], p, qs), dy.dtype)
    dy_wide[..., q:] = 0  # the dropped padded-width columns
    dy_wide[..., :q] = dy.transpose(1, 0, 2, 3)
    for n0, n1, cols in _column_chunks(planes, w, stride, p, q, exact):
        dw += dy_wide[:, n0:n1].reshape(k, -1) @ cols.T
    return dw.reshape(w.shape)


def _data_grad_exact(dy, x_shape, w, stride, pads):
    """dx by its definition, for filters holding inf or NaN: each tap's dy x w product added where the tap
    lands (col2im), so no structural zero (padding, a gap between strided windows) meets the filters."""
    n, c, h, wd = x_shape
    k, _, r, s = w.shape
    _, _, p, q = dy.shape
    (sh, sw), (t, _, l, _) = stride, pads
    cols = (w.reshape(k, -1).T @ dy.transpose(1, 0, 2, 3).reshape(k, -1)).reshape(c, r, s, n, p, q)
    padded = np.zeros((c, n, h + pads[0] + pads[1], wd + pads[2] + pads[3]), dy.dtype)
    for i in range(r):
        for j in range(s):
            padded[:, :, i: i + sh * (p - 1) + 1: sh, j: j + sw * (q - 1) + 1: sw] += cols[:, i, j]
    return np.ascontiguousarray(padded[:, :, t: t + h, l: l + wd].transpose(1, 0, 2, 3))


def _data_grad(dy, x_shape, w, stride, pads):
    """dx: dy scattered onto the window starts of the padded input (zeros between them for
    stride > 1), then a full correlation with the flipped, channel-transposed kernel; the
    padding is cropped away by where that correlation starts. Filters holding inf or NaN take
    _data_grad_exact instead (the correlation would multiply them by the padding's zeros)."""
    if not np.isfinite(w).all():
        return _data_grad_exact(dy, x_shape, w, stride, pads)
    n, c, h, wd = x_shape
    k, _, r, s = w.shape
    _, _, p, q = dy.shape
    sh, sw = stride
    t, _, l, _ = pads
    hz, wz = h + pads[0] + pads[1] - r + 1, wd + pads[2] + pads[3] - s + 1  # window starts at stride 1
    if (sh, sw) == (1, 1):
        z = dy
    else:
        z = np.zeros((n, k, hz, wz), dy.dtype)
        z[:, :, ::sh, ::sw][:, :, :p, :q] = dy
    planes = _planes(z, (r - 1 - t, h + t - hz, s - 1 - l, wd + l - wz), 1, name="planes_dy")
    w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, R, S)
    dx = np.empty(x_shape, dy.dtype)
    for n0, n1, y in _correlate(planes, w_flip, (1, 1), h, wd):
        dx[n0:n1] = y[..., :wd].transpose(1, 0, 2, 3)
    return dx


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads, input_grad=True, relu_mask=False):
    db = dy.sum(axis=(0, 2, 3))
    if dy.size == 0 or x.size == 0 or w.size == 0:  # no batch, channels or filters: zero gradients but db
        return (np.zeros(x.shape, dy.dtype) if input_grad else None), np.zeros(w.shape, dy.dtype), db
    xc, stride, pads, sources = _compact(x, w.shape[2], w.shape[3], stride, pads, dy.shape[2:])
    dx = None
    if input_grad:
        dx = _scatter_back(_data_grad(dy, xc.shape, w, stride, pads), x.shape, sources)
        if relu_mask:
            dx[x <= 0] = 0
    return dx, _weight_grad(dy, xc, w, stride, pads), db
