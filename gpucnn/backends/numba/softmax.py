"""The softmax family as Numba CUDA kernels: softmax, log_softmax, softmax_backward, the fused softmax
cross-entropy, and its device record of labels out of range (`label_errors`).

Kernels, each beside its launcher (the names of kernels/softmax.cu where they do the same job):

- `softmax_rows`, `softmax_bwd_rows`: one thread per softmax row (the max subtracted first); any rank
  and dim, the contiguous array seen as (outer, D, inner) (`gpucnn.shapes.softmax_rows`), so each covers
  both of softmax.cu's layouts (its *_rows for inner == 1 and *_strided for inner > 1).
- `softmax_xent`: per row, the stable log-sum-exp, the row's loss and its gradient row (softmax -
  onehot) / N in one pass (a label out of range recorded on the device, never used as an index); then
  `_common.col_sum` averages the row losses (softmax.cu's xent_mean) and `xent_count_launch` counts the
  launch in the error record (xent_mean does both in one kernel there).

Float32 discipline: no float64 literal or intermediate in a kernel; every scalar a kernel needs is made
on the host as a value of the array dtype and passed as an argument.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ... import shapes
from .._base import register
from . import _common

B = "numba"

ROW_THREADS = 64  # threads per block of the one-thread-per-row kernels


# --------------------------------------------------------------------------- softmax, log_softmax, backward

@cuda.jit(cache=True)
def softmax_rows(x, out, d, inner, log, zero):
    """Each thread one row (elements base + j*inner, j < d): max, sum of exp, then softmax or log-softmax.
    Both layouts of kernels/softmax.cu in one kernel: its softmax_rows (inner == 1, rows contiguous) and
    softmax_strided (inner > 1)."""
    start = cuda.grid(1)
    rows = x.size // d
    for r in range(start, rows, cuda.gridsize(1)):
        o = r // inner
        base = o * d * inner + (r - o * inner)
        mx = x[base]
        for j in range(1, d):
            v = x[base + j * inner]
            if v > mx:
                mx = v
        total = zero
        for j in range(d):
            total += math.exp(x[base + j * inner] - mx)
        if log:
            log_total = math.log(total)
            for j in range(d):
                out[base + j * inner] = (x[base + j * inner] - mx) - log_total
        else:
            for j in range(d):
                out[base + j * inner] = math.exp(x[base + j * inner] - mx) / total


@cuda.jit(cache=True)
def softmax_bwd_rows(dy, y, dx, d, inner, zero):
    """Each thread one row: dx = y * (dy - sum(dy * y)). Both layouts of kernels/softmax.cu in one kernel:
    its softmax_bwd_rows (inner == 1) and softmax_bwd_strided (inner > 1)."""
    start = cuda.grid(1)
    rows = y.size // d
    for r in range(start, rows, cuda.gridsize(1)):
        o = r // inner
        base = o * d * inner + (r - o * inner)
        dot = zero
        for j in range(d):
            dot += dy[base + j * inner] * y[base + j * inner]
        for j in range(d):
            k = base + j * inner
            dx[k] = y[k] * (dy[k] - dot)


def _softmax(x, dim, log):
    x = _common.device(x)
    out = _common.empty(x.shape, x.dtype)
    rows, d, inner = shapes.softmax_rows(x.shape, dim)
    if rows:
        (zero,) = _common.scalars(x.dtype, 0)
        softmax_rows[_common.grid_1d(rows, ROW_THREADS)](_common.flat(x), _common.flat(out), d, inner, log, zero)
    return out


@register("softmax", B)
def softmax(x, dim):
    return _softmax(x, dim, log=False)


@register("log_softmax", B)
def log_softmax(x, dim):
    return _softmax(x, dim, log=True)


@register("softmax_backward", B)
def softmax_backward(dy, y, dim):
    dy, y = _common.device(dy), _common.device(y)
    dx = _common.empty(y.shape, y.dtype)
    rows, d, inner = shapes.softmax_rows(y.shape, dim)
    if rows:
        (zero,) = _common.scalars(y.dtype, 0)
        softmax_bwd_rows[_common.grid_1d(rows, ROW_THREADS)](
            _common.flat(dy), _common.flat(y), _common.flat(dx), d, inner, zero)
    return dx


# --------------------------------------------------------------------------- fused loss

# The device's record of labels out of range (as kernels/softmax.cu's XENT_ERR_*): first bad launch
# (-1 none), its row, its label, its classes, loss launches since the host last reset the record.
_ERR_LAUNCH, _ERR_ROW, _ERR_LABEL, _ERR_CLASSES, _ERR_COUNT = range(5)
_LABELS = _common.ErrorRecord(np.array([-1, 0, 0, 0, 0], np.int32))


@cuda.jit(cache=True)
def softmax_xent(logits, labels, dlogits, row_loss, err, one, nan, n):
    """Each thread one row: row_loss = -log softmax[label], dlogits = (softmax - onehot) / n. A label out of
    range is never used as an index: its row gets a NaN loss and a zero gradient, and the first one is
    recorded in `err` (the host never reads labels to check them)."""
    start = cuda.grid(1)
    classes = logits.shape[1]
    for r in range(start, logits.shape[0], cuda.gridsize(1)):
        label = labels[r]
        if label < 0 or label >= classes:
            for j in range(classes):
                dlogits[r, j] = one - one
            row_loss[r, 0] = nan
            if cuda.atomic.cas(err, _ERR_LAUNCH, -1, err[_ERR_COUNT]) == -1:
                err[_ERR_ROW] = r
                err[_ERR_LABEL] = max(min(label, 2147483647), -2147483647)
                err[_ERR_CLASSES] = classes
            continue
        mx = logits[r, 0]
        for j in range(1, classes):
            if logits[r, j] > mx:
                mx = logits[r, j]
        total = one - one
        for j in range(classes):
            total += math.exp(logits[r, j] - mx)
        log_total = math.log(total)
        row_loss[r, 0] = -((logits[r, label] - mx) - log_total)
        for j in range(classes):
            p = math.exp((logits[r, j] - mx) - log_total)
            if j == label:
                p -= one
            dlogits[r, j] = p / n


@cuda.jit(cache=True)
def xent_count_launch(err):
    """One thread: count a loss launch in the label-error record (after its rows kernel, stream-ordered)."""
    err[_ERR_COUNT] += 1


@register("label_errors", B)
def label_errors(reset=True):
    """None, or (launch, row, label, classes) of the first label out of range since the last reset."""
    launch, row, label, classes, _ = _LABELS.read(reset)
    return None if launch < 0 else (launch, row, label, classes)


@register("softmax_cross_entropy", B)
def softmax_cross_entropy(logits, labels):
    logits, labels = _common.device(logits), _common.device(labels)
    n = logits.shape[0]
    dlogits = _common.empty(logits.shape, logits.dtype)
    row_loss = _common.empty((n, 1), logits.dtype)
    if n == 0:  # the mean of nothing, as NumPy: NaN
        loss = cuda.device_array((1,), logits.dtype)
        _common.fill_nan[1, 1](loss)
        return loss.reshape(()), dlogits
    one, nan, n_typed = _common.scalars(logits.dtype, 1, math.nan, n)
    err = _LABELS.array()
    softmax_xent[_common.grid_1d(n, ROW_THREADS)](logits, labels, dlogits, row_loss, err, one, nan, n_typed)
    xent_count_launch[1, 1](err)
    loss = _common.column_sums(row_loss, divisor=n)  # shape (1,): the mean over the batch
    return loss.reshape(()), dlogits
