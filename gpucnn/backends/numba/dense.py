"""The linear layer as Numba CUDA kernels: a tiled shared-memory matrix product.

Kernels (kernels/dense.cu runs linear_fwd, linear_dgrad, linear_wgrad and linear_bias_grad; here one
generic product plays the first three roles):

- `matmul` (one per float dtype and tile, built by `make_matmul`): C = op(A) @ op(B) (+ bias per column),
  op a transpose chosen by a flag. Each (TILE, TILE) block stages one TILE x TILE tile of op(A) and of
  op(B) in shared memory per step along K, zero-filled past the edges, so any sizes work.
  `linear` is x @ w.T + b (linear_fwd); `linear_backward` reuses it for dx = dy @ w (linear_dgrad) and
  dw = dy.T @ x (linear_wgrad), and `_common.col_sum` for db (linear_bias_grad).

Float32 discipline: no float64 literal or intermediate in a kernel. Every scalar a kernel needs
(zero, one, N, ...) is made on the host as a value of the array dtype and passed as an argument;
shared arrays take the dtype from the kernel factory. TILE lives in _common (col_sum shares it).
"""
from __future__ import annotations

from numba import cuda

from .._base import register
from . import _common

B = "numba"


# --------------------------------------------------------------------------- matrix product

def make_matmul(dt, tile=None):
    """The matmul kernel for numba dtype `dt` and a (tile, tile) block (default: the current TILE)."""
    tile = _common.TILE if tile is None else int(tile)

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
    (zero,) = _common.scalars(a.dtype, 0)
    tile = _common.TILE
    grid = _common.grid_2d(rows, cols, tile, tile)  # (column tiles, row tiles)
    kernel = _common.specialize(_matmul_kernels, make_matmul, a.dtype, tile)
    dummy = _common.flat(out)  # a 1-D array of the dtype where there is no bias (never read)
    kernel[grid, (tile, tile)](a, b, dummy if bias is None else bias, out, trans_a, trans_b, bias is not None, zero)
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
    return dx, dw, _common.column_sums(dy)  # N = 0 gives zeros: the loops over k and rows run zero times
