"""What every Numba kernel module shares: device arrays in and out, launch geometry, poisoning.

Arrays: a launcher accepts Numba device arrays, CuPy arrays (zero-copy through
__cuda_array_interface__) and host NumPy arrays (copied to the device once:
models keep their parameters on the device, so this happens for inputs only).
Outputs are Numba device arrays, allocated by `empty`; with POISON set (the
tests set it) they are filled with NaN first, so an element a kernel forgets to
write fails the comparison with the NumPy backend.

Launch geometry is computed here, in one place: `grid_1d` for elementwise
kernels (one thread per element, grid-stride loop), `grid_2d` for tiled ones.
Kernels check their own bounds, which the simulator turns into IndexErrors.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

THREADS_1D = 256
MAX_BLOCKS_1D = 4096  # the grid-stride loop covers the rest
POISON = False  # tests set True: outputs start as NaN


def device(a):
    """`a` as a Numba device array: device arrays pass through, CuPy zero-copy, NumPy copied once."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if hasattr(a, "copy_to_host"):  # a Numba device array (or the simulator's stand-in)
        return a
    if hasattr(a, "__cuda_array_interface__"):  # CuPy and friends, zero-copy
        return cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    """A fresh device array for an output (NaN-filled when POISON is set)."""
    out = cuda.device_array(tuple(int(s) for s in shape), dtype=dtype)
    if POISON and np.dtype(dtype).kind == "f" and out.size:
        fill_nan[grid_1d(out.size)](out.reshape(out.size))
    return out


def zeros(shape, dtype):
    out = cuda.device_array(tuple(int(s) for s in shape), dtype=dtype)
    if out.size:
        fill_zero[grid_1d(out.size)](out.reshape(out.size))
    return out


def grid_1d(n: int, threads: int = THREADS_1D) -> tuple[int, int]:
    """(blocks, threads) for n elements with a grid-stride loop."""
    return max(1, min(MAX_BLOCKS_1D, math.ceil(n / threads))), threads


def grid_2d(rows: int, cols: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """Blocks covering a rows x cols output in tiles; the kernel decides how threads map to a tile."""
    return math.ceil(cols / tile_cols), math.ceil(rows / tile_rows)


def flat(a):
    """A contiguous device array viewed as 1-D (no copy)."""
    return a.reshape(a.size)


@cuda.jit(cache=True)
def fill_nan(out):
    start = cuda.grid(1)
    for i in range(start, out.size, cuda.gridsize(1)):
        out[i] = math.nan


@cuda.jit(cache=True)
def fill_zero(out):
    start = cuda.grid(1)
    for i in range(start, out.size, cuda.gridsize(1)):
        out[i] = 0
