"""What every CuPy-backend launcher shares: the kernel modules, argument checks, launch geometry.

Kernels: the CUDA C of ``kernels/<family>.cu`` (shipped in the wheel as the
package ``gpucnn.kernels``), compiled once per process by ``cupy.RawModule``
with the family's template instances listed as name expressions. With
GPUCNN_CUPY_EMULATE=1 the same sources are compiled for the CPU by g++ and run
through hostemu (tests on machines without a GPU); arrays are then NumPy arrays.

Checks: CuPy checks nothing about a raw kernel's arguments, and a float64 or a
strided array would be read as garbage. Every launcher passes its arrays
through ``operand``/``check`` first: float32, C-contiguous, on the device,
sizes that fit 32-bit indexing. Nothing is cast or copied silently, except
host NumPy inputs, which are uploaded once (models keep parameters on the device).

Outputs come from ``empty``; with POISON set (the tests set it) they are filled
with NaN, so an element a kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import numpy as np

EMULATED = os.environ.get("GPUCNN_CUPY_EMULATE") == "1"
POISON = False
THREADS = 256          # GPUCNN_THREADS in kernels/common.cuh
MAX_BLOCKS_1D = 65535  # grid-stride loops cover the rest
INT32_MAX = 2**31 - 1

if EMULATED:
    xp = np
    from . import hostemu
else:  # pragma: no cover - needs CuPy and a GPU
    import cupy as xp


def kernels_dir() -> Path:
    """Where kernels/*.cu live: the package gpucnn.kernels (the repository's kernels/ directory)."""
    return Path(str(resources.files("gpucnn.kernels")))


@functools.lru_cache(maxsize=None)
def _module(family: str, names: tuple[str, ...]):
    path = kernels_dir() / f"{family}.cu"
    if EMULATED:
        return hostemu.Module(path, list(names))
    return xp.RawModule(code=path.read_text(), options=("-std=c++17", f"-I{kernels_dir()}"),  # pragma: no cover
                        name_expressions=list(names))


class Family:
    """The kernels of one kernels/<family>.cu file; compiled on first launch, all instances at once."""

    def __init__(self, family: str, names):
        self.family = family
        self.names = tuple(names)

    def launch(self, name: str, grid, block, args) -> None:
        if name not in self.names:
            raise ValueError(f"{name!r} is not a kernel instance of {self.family}.cu (known: {', '.join(self.names)})")
        grid = tuple(int(g) for g in grid)
        block = tuple(int(b) for b in block)
        if any(g < 1 for g in grid) or len(grid) > 3 or (len(grid) > 1 and max(grid[1:]) > 65535):
            raise ValueError(f"{name}: invalid grid {grid}")
        if not 1 <= int(np.prod(block)) <= 1024:
            raise ValueError(f"{name}: invalid block {block}")
        _module(self.family, self.names).get_function(name)(grid, block, tuple(args))


# --------------------------------------------------------------------------- arrays

def device(a):
    """`a` on the device: device arrays pass through; host NumPy arrays are uploaded (no dtype change)."""
    if EMULATED:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"expected a NumPy array (the emulated cupy backend), got {type(a).__name__}")
        return a
    return xp.asarray(a)  # pragma: no cover - zero-copy for CuPy and __cuda_array_interface__ arrays


def check(op: str, **arrays) -> None:
    """Raise before any launch unless every array is float32, C-contiguous and 32-bit indexable."""
    for name, a in arrays.items():
        if a is None:
            continue
        if a.dtype != np.float32:
            raise TypeError(f"{op}: {name} must be float32 for the cupy backend's kernels, got {a.dtype} "
                            "(cast it yourself with .astype(np.float32), or use the numpy backend for float64)")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: {name} must be C-contiguous for a raw kernel, got strides {a.strides} "
                             f"for shape {a.shape} (pass an ascontiguousarray copy)")
        if a.size > INT32_MAX:
            raise ValueError(f"{op}: {name} has {a.size} elements; the kernels index with 32-bit integers")


def operand(op: str, name: str, a):
    """Upload if needed, then check: the one way a launcher takes an array argument."""
    if a is None:
        return None
    a = device(a)
    check(op, **{name: a})
    return a


def empty(shape, dtype=np.float32):
    """A fresh output array (NaN-filled when POISON is set)."""
    shape = tuple(int(s) for s in shape)
    out = hostemu.guarded_empty(shape, dtype) if EMULATED else xp.empty(shape, dtype)
    if POISON and np.dtype(dtype).kind == "f":
        out.fill(np.nan)
    return out


def zeros(shape, dtype=np.float32):
    out = empty(shape, dtype)
    out.fill(0)
    return out


def i32(v) -> np.int32:
    v = int(v)
    if not -INT32_MAX - 1 <= v <= INT32_MAX:
        raise ValueError(f"{v} does not fit the kernels' 32-bit integer arguments")
    return np.int32(v)


def f32(v) -> np.float32:
    return np.float32(v)


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def grid_1d(n: int, threads: int = THREADS) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride loop over n elements."""
    return (max(1, min(ceil_div(n, threads), MAX_BLOCKS_1D)),), (threads,)
