"""What every Numba kernel module shares: device arrays in and out, launch geometry, poisoning.

Arrays: a launcher accepts Numba device arrays, CuPy arrays (zero-copy through
__cuda_array_interface__) and host NumPy arrays (copied to the device once:
models keep their parameters on the device, so this happens for inputs only).
Outputs are Numba device arrays, allocated by `empty`; with POISON set (the
tests set it) they are filled with NaN first, so an element a kernel forgets to
write fails the comparison with the NumPy backend.

Launch geometry is computed here, in one place: `grid_1d` for elementwise
kernels (one thread per element, grid-stride loop), `grid_2d` for tiled ones,
and the block sizes several families share (TILE, REDUCE_THREADS, SUM_LANES).
Kernels check their own bounds, which the simulator turns into IndexErrors.

Also shared: `in_place` (refuse host arrays an op would update only as a copy),
`scalars` (host scalars of the array dtype: no float64 in a float32 kernel),
`specialize` (a kernel factory's kernel per dtype and compile-time parameters).

Kernels here: `fill_nan`, `fill_zero`; `col_sum` (per dtype and tile, built by
`make_col_sum`, launched by `column_sums`: db of linear, the loss's batch mean);
the device function `tree_sum` (the shared-memory tree reduction of norm.py's
per-channel sums and conv.py's weight and bias gradients).
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import cuda

if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:  # the user's own setting wins
    try:  # numba-cuda builds a low-occupancy warning check into every launch; the backend's launches are sized
        from numba.cuda.core import config as _cuda_config  # on purpose (small grids on small batches)
        _cuda_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    except ImportError:  # pragma: no cover - an older numba keeps it in numba.config
        numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

THREADS_1D = 256
MAX_BLOCKS_1D = 4096  # the grid-stride loop covers the rest
POISON = False  # tests set True: outputs start as NaN

# Block sizes shared by several families. TILE is the side of dense.py's matmul tiles and the columns per
# `col_sum` block; launchers read it at every launch (`_common.TILE`) and pass it to the kernel factory,
# which freezes it into the kernel it compiles (shared arrays need a constant size; one kernel per dtype
# and tile). A GPU gets 16 x 16 tiles; the simulator runs each thread as a Python thread, so it gets small
# blocks by default. Tests set TILE = GPU_TILE to run the GPU geometry in the simulator on small shapes.
GPU_TILE = 16
SIM_TILE = 8
TILE = SIM_TILE if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else GPU_TILE
GPU_REDUCE_THREADS = 256
REDUCE_THREADS = 64 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else GPU_REDUCE_THREADS  # one block's
# threads in a per-channel reduction (batch norm); a power of two: the tree halves it. norm.py imports it by
# value and its kernels read it as a global: not selectable per launch like TILE.
SUM_LANES = 8  # row lanes per column in `col_sum`; a power of two

_NUMBA_TYPES = {np.dtype(np.float32): numba.float32, np.dtype(np.float64): numba.float64}


def device(a):
    """`a` as a Numba device array: device arrays pass through, CuPy zero-copy, NumPy copied once."""
    if isinstance(a, np.ndarray):  # (np.ascontiguousarray would make a 0-d array 1-d)
        return cuda.to_device(np.asarray(a, order="C"))
    if hasattr(a, "copy_to_host"):  # a Numba device array (or the simulator's stand-in)
        return a
    if hasattr(a, "__cuda_array_interface__"):  # CuPy and friends, zero-copy
        return cuda.as_cuda_array(a)
    return cuda.to_device(np.asarray(a, order="C"))


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


class ErrorRecord:
    """A small int array kernels write the first bad input they meet into (a label out of range, a max-pool index
    outside its window), never read by a launcher: allocated once on the device, reset by a device copy of
    `empty`, its value when nothing was met."""

    def __init__(self, empty):
        self.empty = np.asarray(empty)
        self._arrays = None

    def array(self):
        if self._arrays is None:
            self._arrays = (cuda.to_device(self.empty), cuda.to_device(self.empty))
        return self._arrays[0]

    def read(self, reset: bool) -> list[int]:
        """The record's values (one device-to-host read); reset: then cleared."""
        values = [int(v) for v in self.array().copy_to_host()]
        if reset:
            self._arrays[0].copy_to_device(self._arrays[1])
        return values


def grid_1d(n: int, threads: int = THREADS_1D) -> tuple[int, int]:
    """(blocks, threads) for n elements with a grid-stride loop."""
    return max(1, min(MAX_BLOCKS_1D, math.ceil(n / threads))), threads


def grid_2d(rows: int, cols: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """Blocks covering a rows x cols output in tiles; the kernel decides how threads map to a tile."""
    return math.ceil(cols / tile_cols), math.ceil(rows / tile_rows)


def flat(a):
    """A contiguous device array viewed as 1-D (no copy)."""
    return a.reshape(a.size)


def in_place(a, name):
    """A device array that an op updates in place; a host array would only update a copy: refuse it."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) or not (hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")):
        raise TypeError(f"{name} is updated in place, so on the numba backend it must be a device array "
                        f"(from gpucnn.functional.asarray under use_backend('numba')), got {type(a).__name__}")
    return device(a)


def scalars(dtype, *values):
    """Host scalars as values of `dtype`, to pass to kernels (no float64 in a float32 kernel)."""
    t = np.dtype(dtype).type
    return tuple(t(v) for v in values)


def specialize(cache, factory, dtype, *params):
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


@cuda.jit(device=True, cache=True)
def tree_sum(buf, tid, nthreads, rows):
    """Sum buf[t, 0:nthreads] into buf[t, 0] for every row t < rows, all rows at once: one barrier per
    halving. nthreads is a power of two; every thread of the block must call this (it synchronizes
    first), after writing its own column buf[:, tid]. Callers read buf[t, 0], then sync before reusing buf."""
    cuda.syncthreads()
    half = nthreads // 2
    while half > 0:
        if tid < half:
            for t in range(rows):
                buf[t, tid] += buf[t, tid + half]
        cuda.syncthreads()
        half //= 2


# --------------------------------------------------------------------------- column sums

def make_col_sum(dt, tile=None):
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


def column_sums(a, divisor=1):
    """a (rows, cols) summed over rows (divided by `divisor`), as a new (cols,) device array."""
    out = empty((a.shape[1],), a.dtype)
    if out.size == 0:
        return out
    zero, div = scalars(a.dtype, 0, divisor)
    tile = TILE
    blocks, _ = grid_2d(1, a.shape[1], 1, tile)  # column tiles
    kernel = specialize(_col_sum_kernels, make_col_sum, a.dtype, tile)
    kernel[blocks, (tile, SUM_LANES)](a, out, zero, div)
    return out
