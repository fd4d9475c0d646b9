"""Dense ops as Numba CUDA kernels: linear (tiled shared-memory matrix product), softmax family, fused loss.

Kernels, each beside its launcher:

- `matmul` (one per float dtype and tile, built by `_kernel`): C = op(A) @ op(B) (+ bias per column),
  op a transpose chosen by a flag. Each (TILE, TILE) block stages one TILE x TILE tile of op(A) and of
  op(B) in shared memory per step along K, zero-filled past the edges, so any sizes work.
  `linear` is x @ w.T + b; `linear_backward` reuses it for dx = dy @ w and dw = dy.T @ x.
- `col_sum` (per dtype and tile): a block per TILE columns, SUM_LANES threads per column striding over the
  rows, then a shared-memory tree reduction over the lanes; db of linear, and the batch mean of the loss.
- `tree_sum`: the device function of the per-channel tree reductions in norm.py.
- `_softmax_rows`, `_softmax_backward_rows`: one thread per softmax row (the max subtracted first);
  any rank and dim, as the contiguous array viewed as (outer, D, inner).
- `_cross_entropy_rows`: per row, the stable log-sum-exp, the row's loss and its gradient row
  (softmax - onehot) / N in one pass (a label out of range recorded on the device, never used as an
  index); then `col_sum` averages the row losses.

Float32 discipline: no float64 literal or intermediate in a kernel. Every scalar a kernel needs
(zero, one, N, ...) is made on the host as a value of the array dtype and passed as an argument;
shared arrays take the dtype from the kernel factory.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import cuda

from ...backend import register
from . import _common

B = "numba"

# Launch geometry. TILE is the side of the matmul tiles and the columns per `col_sum` block; the
# launchers read it at every launch and pass it to the kernel factory, which freezes it into the
# kernel it compiles (shared arrays need a constant size; one kernel per dtype and tile). A GPU gets
# 16 x 16 tiles; the simulator runs each thread as a Python thread, so it gets small blocks by
# default. Tests set TILE = GPU_TILE to run the GPU geometry in the simulator on small shapes.
GPU_TILE = 16
SIM_TILE = 8
TILE = SIM_TILE if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else GPU_TILE
GPU_REDUCE_THREADS = 256
REDUCE_THREADS = 64 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else GPU_REDUCE_THREADS  # one block's
# threads in a per-channel reduction (batch norm); a power of two: the tree halves it. A module constant
# read by `tree_sum` here and by norm.py, which imports it by value: not selectable per launch like TILE.
SUM_LANES = 8  # row lanes per column in `col_sum`; a power of two
ROW_THREADS = 64  # threads per block of the one-thread-per-row kernels

_NUMBA_TYPES = {np.dtype(np.float32): numba.float32, np.dtype(np.float64): numba.float64}


# --------------------------------------------------------------------------- device arrays

def _in_place(a, name):
    """A device array that an op updates in place; a host array would only update a copy: refuse it."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) or not (hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")):
        raise TypeError(f"{name} is updated in place, so on the numba backend it must be a device array "
                        f"(from gpucnn.functional.asarray under use_backend('numba')), got {type(a).__name__}")
    return _common.device(a)


def _scalars(dtype, *values):
    """Host scalars as values of `dtype`, to pass to kernels (no float64 in a float32 kernel)."""
    t = np.dtype(dtype).type
    return tuple(t(v) for v in values)


def _kernel(cache, factory, dtype, *params):
    """The kernel `factory(numba dtype, *params)` builds for `dtype` and compile-time `params` (shared
    arrays need their dtype and size at compile time); one per (dtype, *params), built once."""
    dtype = np.dtype(dtype)
    key = (dtype, *params)
    k = cache.get(key)
    if k is None:
        if dtype not in _NUMBA_TYPES:
            raise TypeError(f"numba kernels take float32 or float64 arrays, got {dtype}")
        k = cache[key] = factory(_NUMBA_TYPES[dtype], *params)
    return k


@cuda.jit(device=True, cache=True)
def tree_sum(s, tid):
    """Sum s[0:REDUCE_THREADS] into s[0]; every thread of the block calls it (it synchronizes)."""
    step = REDUCE_THREADS // 2
    while step > 0:
        if tid < step:
            s[tid] += s[tid + step]
        cuda.syncthreads()
        step //= 2


# --------------------------------------------------------------------------- matrix product

def _make_matmul(dt, tile=None):
    """The matmul kernel for numba dtype `dt` and a (tile, tile) block (default: the current TILE)."""
    tile = TILE if tile is None else int(tile)

    @cuda.jit
    def matmul(a, b, bias, c, trans_a, trans_b, has_bias, zero):
        """c[m, n] = sum_k opA[m, k] * opB[k, n] (+ bias[n]); opA = a.T if trans_a, opB = b.T if trans_b."""
        sa = cuda.shared.array((tile, tile), dt)
        sb = cuda.shared.array((tile, tile), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        rows = c.shape[0]
        cols = c.shape[1]
        depth = a.shape[0] if trans_a else a.shape[1]
        acc = zero
        for k0 in range(0, depth, tile):  # every thread runs every step: they all reach the barriers
            ka = k0 + tx
            if row < rows and ka < depth:
                sa[ty, tx] = a[ka, row] if trans_a else a[row, ka]
            else:
                sa[ty, tx] = zero
            kb = k0 + ty
            if kb < depth and col < cols:
                sb[ty, tx] = b[col, kb] if trans_b else b[kb, col]
            else:
                sb[ty, tx] = zero
            cuda.syncthreads()
            for k in range(tile):
                acc += sa[ty, k] * sb[k, tx]
            cuda.syncthreads()
        if row < rows and col < cols:
            if has_bias:
                acc += bias[col]
            c[row, col] = acc

    return matmul


_matmul_kernels: dict = {}


def _matmul(a, b, trans_a=False, trans_b=False, bias=None):
    """opA @ opB (+ bias) as a new device array; a, b, bias device arrays of one dtype."""
    rows = a.shape[1] if trans_a else a.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    out = _common.empty((rows, cols), a.dtype)
    if out.size == 0:
        return out
    (zero,) = _scalars(a.dtype, 0)
    tile = TILE
    grid = _common.grid_2d(rows, cols, tile, tile)  # (column tiles, row tiles)
    kernel = _kernel(_matmul_kernels, _make_matmul, a.dtype, tile)
    dummy = _common.flat(out)  # a 1-D array of the dtype where there is no bias (never read)
    kernel[grid, (tile, tile)](a, b, dummy if bias is None else bias, out, trans_a, trans_b, bias is not None, zero)
    return out


# --------------------------------------------------------------------------- column sums

def _make_col_sum(dt, tile=None):
    """The col_sum kernel for numba dtype `dt` and `tile` columns per block (default: the current TILE)."""
    tile = TILE if tile is None else int(tile)

    @cuda.jit
    def col_sum(a, out, zero, divisor):
        """out[j] = sum_i a[i, j] / divisor. A (tile, SUM_LANES) block owns `tile` columns (adjacent
        threads read adjacent columns); its SUM_LANES lanes stride over the rows, then a shared-memory
        tree sums the lanes of each column."""
        s = cuda.shared.array((SUM_LANES, tile), dt)
        tx = cuda.threadIdx.x
        lane = cuda.threadIdx.y
        j = cuda.blockIdx.x * tile + tx
        acc = zero
        if j < a.shape[1]:
            for i in range(lane, a.shape[0], SUM_LANES):
                acc += a[i, j]
        s[lane, tx] = acc
        cuda.syncthreads()
        step = SUM_LANES // 2
        while step > 0:
            if lane < step:
                s[lane, tx] += s[lane + step, tx]
            cuda.syncthreads()
            step //= 2
        if lane == 0 and j < a.shape[1]:
            out[j] = s[0, tx] / divisor

    return col_sum


_col_sum_kernels: dict = {}


def _col_sum(a, divisor=1):
    """a (rows, cols) summed over rows (divided by `divisor`), as a new (cols,) device array."""
    out = _common.empty((a.shape[1],), a.dtype)
    if out.size == 0:
        return out
    zero, div = _scalars(a.dtype, 0, divisor)
    tile = TILE
    blocks, _ = _common.grid_2d(1, a.shape[1], 1, tile)  # column tiles
    kernel = _kernel(_col_sum_kernels, _make_col_sum, a.dtype, tile)
    kernel[blocks, (tile, SUM_LANES)](a, out, zero, div)
    return out


# --------------------------------------------------------------------------- linear

@register("linear", B)
def linear(x, w, b, out_shape):
    x, w = _common.device(x), _common.device(w)
    return _matmul(x, w, trans_b=True, bias=None if b is None else _common.device(b))


@register("linear_backward", B)
def linear_backward(dy, x, w):
    dy, x, w = _common.device(dy), _common.device(x), _common.device(w)
    dx = _matmul(dy, w)  # (N, out) @ (out, in)
    dw = _matmul(dy, x, trans_a=True)  # (out, N) @ (N, in)
    return dx, dw, _col_sum(dy)  # N = 0 gives zeros: the loops over k and rows run zero times


# --------------------------------------------------------------------------- softmax family

def _row_geometry(shape, dim):
    """(rows, D, inner): a contiguous array as (outer, D, inner), one softmax row per (outer, inner)."""
    d = int(shape[dim])
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    rows = int(np.prod(shape, dtype=np.int64)) // d if d else 0
    return rows, d, inner


@cuda.jit(cache=True)
def _softmax_rows(x, out, d, inner, log, zero):
    """Each thread one row (elements base + j*inner, j < d): max, sum of exp, then softmax or log-softmax."""
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
def _softmax_backward_rows(dy, y, dx, d, inner, zero):
    """Each thread one row: dx = y * (dy - sum(dy * y))."""
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
    rows, d, inner = _row_geometry(x.shape, dim)
    if rows:
        (zero,) = _scalars(x.dtype, 0)
        _softmax_rows[_common.grid_1d(rows, ROW_THREADS)](_common.flat(x), _common.flat(out), d, inner, log, zero)
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
    rows, d, inner = _row_geometry(y.shape, dim)
    if rows:
        (zero,) = _scalars(y.dtype, 0)
        _softmax_backward_rows[_common.grid_1d(rows, ROW_THREADS)](
            _common.flat(dy), _common.flat(y), _common.flat(dx), d, inner, zero)
    return dx


# --------------------------------------------------------------------------- fused loss

# The device's record of labels out of range (as kernels/softmax.cu's XENT_ERR_*): first bad launch
# (-1 none), its row, its label, its classes, loss launches since the host last reset the record.
_ERR_LAUNCH, _ERR_ROW, _ERR_LABEL, _ERR_CLASSES, _ERR_COUNT = range(5)
_NO_ERROR = np.array([-1, 0, 0, 0, 0], np.int32)


@cuda.jit(cache=True)
def _cross_entropy_rows(logits, labels, dlogits, row_loss, err, one, nan, n):
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
def _count_loss_launch(err):
    """One thread: count a loss launch in the label-error record (after its rows kernel, stream-ordered)."""
    err[_ERR_COUNT] += 1


_ERR = []


def _error_record():
    """The label-error record on the device, allocated once; the host resets it with a device copy."""
    if not _ERR:
        _ERR.append(cuda.to_device(_NO_ERROR))
        _ERR.append(cuda.to_device(_NO_ERROR))  # the reset value
    return _ERR[0]


@register("label_errors", B)
def label_errors(reset=True):
    """None, or (launch, row, label, classes) of the first label out of range since the last reset."""
    err = _error_record()
    launch, row, label, classes, _ = (int(v) for v in err.copy_to_host())
    if reset:
        err.copy_to_device(_ERR[1])
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
    one, nan, n_typed = _scalars(logits.dtype, 1, math.nan, n)
    err = _error_record()
    _cross_entropy_rows[_common.grid_1d(n, ROW_THREADS)](logits, labels, dlogits, row_loss, err, one, nan, n_typed)
    _count_loss_launch[1, 1](err)
    loss = _col_sum(row_loss, divisor=n)  # shape (1,): the mean over the batch
    return loss.reshape(()), dlogits
