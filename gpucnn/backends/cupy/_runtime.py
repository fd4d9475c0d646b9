"""What every CuPy-backend launcher shares: the kernel modules, argument checks, launch geometry.

Kernels: the CUDA C of ``kernels/<family>.cu`` (shipped in the wheel as the
package ``gpucnn.kernels``), compiled once per process by ``cupy.RawModule``
with the family's template instances listed as name expressions. With
GPUCNN_CUPY_EMULATE=1 the same sources are compiled for the CPU by g++ and run
through hostemu (tests on machines without a GPU), and ``xp`` is ``emucupy``: device
arrays of their own type that refuse implicit host conversion, streams, events and a
stream capture that refuses host reads, as CuPy on a GPU.

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
import hashlib
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
    from . import emucupy as xp
    from . import hostemu
else:  # pragma: no cover - needs CuPy and a GPU
    import cupy as xp


def kernels_dir() -> Path:
    """Where kernels/*.cu live: the installed package gpucnn.kernels, or the checkout's kernels/ directory.

    An installed gpucnn (wheel or editable) maps kernels/ to the package gpucnn.kernels; a checkout run
    through PYTHONPATH with nothing installed has no such package, so the repository's own kernels/
    beside gpucnn/ is used.
    """
    try:
        return Path(str(resources.files("gpucnn.kernels")))
    except ModuleNotFoundError:
        here = Path(__file__).resolve().parents[3] / "kernels"
        if (here / "common.cuh").is_file():
            return here
        raise ModuleNotFoundError("gpucnn.kernels (the CUDA C of kernels/) is not installed and no kernels/ "
                                  f"directory was found at {here}; install gpucnn with pip") from None


OPTIONS = ("-std=c++17",)  # plus -I<kernels_dir()>


def module_source(family: str) -> str:
    """What cupy.RawModule compiles for kernels/<family>.cu: the file, then a comment that names gpucnn's
    version and a hash of every header in kernels/. CuPy caches compiled modules (in memory and on disk)
    by the source string and options only, so without that line an edited common.cuh or gemm.cuh, or
    an upgraded gpucnn, would load a stale binary built from the old headers."""
    from ..._version import __version__ as version
    root = kernels_dir()
    digest = hashlib.sha256()
    for header in sorted(root.glob("*.cuh")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes() + b"\0")
    return (root / f"{family}.cu").read_text() + f"\n// gpucnn {version}, headers sha256 {digest.hexdigest()}\n"


@functools.lru_cache(maxsize=None)
def _module(family: str, names: tuple[str, ...], checked: bool = False):
    """The compiled kernels of a family; emulated with `checked` (GPUCNN_HOSTEMU_CHECK=1): the instrumented build,
    whose launches check every global access against the live allocations (slower; tests run it on a subset)."""
    if EMULATED:  # hostemu keys its cache by the bytes of the file and of every header itself
        return hostemu.Module(kernels_dir() / f"{family}.cu", list(names), instrumented=checked)
    return xp.RawModule(code=module_source(family), options=OPTIONS + (f"-I{kernels_dir()}",),  # pragma: no cover
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
        checked = EMULATED and os.environ.get("GPUCNN_HOSTEMU_CHECK") == "1"
        function = _module(self.family, self.names, checked).get_function(name)
        if EMULATED:  # device arrays to the memory behind them; a host array is refused, as CuPy refuses it
            args = tuple(_emulated_arg(name, i, a) for i, a in enumerate(args))
            xp.run_or_record(lambda: function(grid, block, args))  # recorded, not run, inside a capture
        else:
            function(grid, block, tuple(args))


def _emulated_arg(kernel: str, i: int, a):
    if isinstance(a, np.ndarray):
        raise TypeError(f"{kernel}: argument {i} is a host NumPy array of shape {a.shape}; a kernel takes "
                        "device arrays (CuPy refuses host arrays as kernel arguments)")
    return a.buffer if isinstance(a, xp.ndarray) else a


# --------------------------------------------------------------------------- arrays

def device(a):
    """`a` on the device: device arrays pass through; host NumPy arrays are uploaded (no dtype change)."""
    if EMULATED and not isinstance(a, (np.ndarray, xp.ndarray)):
        raise TypeError(f"expected a device array or a NumPy array (the emulated cupy backend), got "
                        f"{type(a).__name__}")
    return xp.asarray(a)  # zero-copy for device arrays (CuPy's and __cuda_array_interface__ ones)


def check_size(op: str, name: str, a) -> None:
    """`a` (any array) has at most INT32_MAX elements: checked before an upload too (a broadcast host view
    of 2^31 elements would otherwise be copied whole, gigabytes, only to be refused)."""
    if a.size > INT32_MAX:
        raise ValueError(f"{op}: {name} has {a.size:,} elements; the kernels index with 32-bit integers "
                         f"(at most {INT32_MAX:,})")


def check(op: str, **arrays) -> None:
    """Raise before any launch unless every array is float32, C-contiguous and 32-bit indexable."""
    for name, a in arrays.items():
        if a is None:
            continue
        check_size(op, name, a)
        if a.dtype != np.float32:
            raise TypeError(f"{op}: {name} must be float32 for the cupy backend's kernels, got {a.dtype} "
                            "(cast it yourself with .astype(np.float32), or use the numpy backend for float64)")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: {name} must be C-contiguous for a raw kernel, got strides {a.strides} "
                             f"for shape {a.shape} (pass an ascontiguousarray copy)")


def operand(op: str, name: str, a):
    """Upload if needed, then check: the one way a launcher takes an array argument."""
    if a is None:
        return None
    check_size(op, name, a)
    a = device(a)
    check(op, **{name: a})
    return a


def persistent_empty(shape, dtype=np.float32):
    """An array that outlives a training step (parameters' state, counters): never from the step arena."""
    return xp.empty(tuple(int(s) for s in shape), dtype)


def empty(shape, dtype=np.float32):
    """A fresh output array (NaN-filled when POISON is set); inside `workspace(arena)`, carved from the arena."""
    shape = tuple(int(s) for s in shape)
    out = _ARENA.take(shape, dtype) if _ARENA is not None else persistent_empty(shape, dtype)
    if POISON and np.dtype(dtype).kind == "f":
        out.fill(np.nan)
    return out


class ErrorRecord:
    """A small int array kernels write the first bad input they meet into (a label out of range, a max-pool index
    outside its window), never read by a launcher: persistent (allocated once, so a captured step can hold its
    address) and reset by a device-side copy of `empty`, its value when nothing was met."""

    def __init__(self, empty):
        self.empty = np.asarray(empty, np.int32)
        self._arrays = None

    def array(self):
        if self._arrays is None:
            self._arrays = (persistent_empty(self.empty.shape, np.int32), xp.asarray(self.empty))
            self._arrays[0][...] = self._arrays[1]
        return self._arrays[0]

    def read(self, reset: bool) -> list[int]:
        """The record's values (one device-to-host read); reset: then cleared."""
        values = [int(v) for v in self.array().get()]
        if reset:
            self._arrays[0][...] = self._arrays[1]
        return values


def zeros(shape, dtype=np.float32):
    """A zeroed array that outlives a step (optimizer state): never from the step arena."""
    out = persistent_empty(shape, dtype)
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


def pointer(a) -> int:
    """The device address of an array's first element (a host address when emulated)."""
    return int(a.data.ptr)


def aligned(*arrays, bytes_: int = 16) -> bool:
    """True when every array starts on a `bytes_` boundary (float4 loads need 16)."""
    return all(pointer(a) % bytes_ == 0 for a in arrays)


def in_place(op: str, name: str, a):
    """An array the op updates in place: it must already be on the device (an upload would update a
    copy and the caller would never see the change), then the usual checks."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} is updated in place, so on the cupy backend it must be a device array "
                        "(from gpucnn.functional.asarray under use_backend('cupy')), got a NumPy array")
    a = device(a)
    check(op, **{name: a})
    return a


def int_operand(op: str, name: str, a, dtypes=(np.int32, np.int64)):
    """An integer index array (labels, max-pool indices): on the device and C-contiguous. Kept as is when its
    dtype is one the kernels are instantiated for, else converted once to the widest (int64)."""
    check_size(op, name, a)
    a = device(a)
    if np.dtype(a.dtype) not in [np.dtype(d) for d in dtypes]:
        a = xp.ascontiguousarray(a, dtype=dtypes[-1])
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous for a raw kernel, got strides {a.strides} "
                         f"for shape {a.shape} (pass an ascontiguousarray copy)")
    return a


C_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}


def c_type(dtype) -> str:
    """The C type a kernel template is instantiated with for an integer array dtype."""
    return C_TYPES[np.dtype(dtype)]


# --------------------------------------------------------------------------- multi-tensor tables

class TensorTable:
    """Device tables for one launch over many tensors (multi-tensor apply).

    ptrs: uint64 (lists, tensors): the address of tensor t of list l at ptrs[l, t] (the kernel reads
    row l at ptrs + l * tensors). sizes: int32 (tensors,). chunks: int32 (nchunks, 2): (tensor,
    first element) of each chunk of `chunk` elements; a block (or several, grid-stride) takes chunks
    in turn, so one launch covers tensors of any sizes and empty tensors cost nothing.
    """

    def __init__(self, lists, chunk: int):
        self.tensors = len(lists[0])
        self.chunk = int(chunk)
        addresses = np.array([[pointer(a) for a in seq] for seq in lists], np.uint64).reshape(len(lists), -1)
        sizes = np.array([int(a.size) for a in lists[0]], np.int32)
        chunk_rows = [(t, start) for t, size in enumerate(sizes.tolist()) for start in range(0, size, self.chunk)]
        self.nchunks = len(chunk_rows)
        chunks = np.array(chunk_rows, np.int32).reshape(-1, 2)
        self.ptrs, self.sizes, self.chunks = xp.asarray(addresses), xp.asarray(sizes), xp.asarray(chunks)
        self._keep = lists  # the tables hold raw addresses: keep the arrays alive with them


_TABLES: dict = {}
_TABLES_MAX = 8  # a training loop uses one or two parameter lists; a few more for tests and eval


def tensor_table(lists, chunk: int) -> TensorTable:
    """The TensorTable for these lists of same-size arrays, built and uploaded once, then reused.

    Keyed by every array's address and size, so a step with the same parameters finds it (no
    rebuild, no host-to-device copy), and arrays reallocated elsewhere get a fresh table.
    """
    key = (int(chunk), len(lists)) + tuple((pointer(a), int(a.size)) for seq in lists for a in seq)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.pop(next(iter(_TABLES)))
        table = _TABLES[key] = TensorTable([list(seq) for seq in lists], chunk)
    return table


NULL = np.uint64(0)  # a null pointer argument (an absent bias, no ReLU mask)


def ptr(a):
    """An optional array argument: the array, or a null pointer."""
    return NULL if a is None else a


@functools.lru_cache(maxsize=None)
def sm_count() -> int:
    """Streaming multiprocessors of the current device (4 when emulated, so small tests exercise split-K)."""
    if EMULATED:
        return 4
    return int(xp.cuda.Device().attributes["MultiProcessorCount"])  # pragma: no cover - GPU only


# --------------------------------------------------------------------------- GEMM tiles (gemm.cuh)

GEMM_TILES = ((128, 128), (128, 64), (128, 32), (64, 64), (64, 32))  # (BM, BN) instances of gemm::block_tile
GEMM_BK = 16
# the general (slower-gathering) variants of a GEMM: only the tiles of 128 threads or more, whose threads
# load few elements a step (the narrow tiles' many loads a thread would not fit in registers there)
GENERAL_TILES = ((128, 128), (128, 64))
TF32_TILES = ((128, 128), (128, 64), (64, 64))  # TF32: the tiles whose warps hold 4 x 4 mma tiles


def gemm_tiles(fast: bool, tf32: str | bool) -> tuple:
    """The (BM, BN) tiles a GEMM variant is instantiated for: every tile for the fast gathers in FP32, the
    wide ones for the general gathers (GENERAL_TILES) and for TF32 (TF32_TILES); tf32 as math_mode() gives it."""
    tiles = GEMM_TILES if fast else GENERAL_TILES
    return tuple(t for t in tiles if t in TF32_TILES) if tf32 in (True, "true") else tiles
# threads of a tile's block (gemm::Tile<BM, BN>::NT: 8x8 of C per thread)
GEMM_THREADS = {(128, 128): 256, (128, 64): 128, (128, 32): 64, (64, 64): 64, (64, 32): 32}
# what a tile's main loop delivers, as a share of the FP32 FMA rate (the static model of gemm.cuh's SASS,
# `gpucnn kernels`, rounded down): wider tiles load less per FMA
GEMM_EFFICIENCY = {(128, 128): 0.88, (128, 64): 0.85, (128, 32): 0.82, (64, 64): 0.82, (64, 32): 0.80}
_SM_FLOPS = 0.5e12      # FP32 FLOP/s of one SM (an H100/H200 SM: 128 FMA a clock at ~2 GHz)
_BANDWIDTH = 3.0e12     # bytes/s a split-K reduction streams at (HBM3, with margin)
_LAUNCH = 2e-6          # seconds one more kernel launch costs (the split-K reduction)
MAX_SPLITS = 256


FILL_SLACK = 1.15     # a plan that leaves schedulers idle loses to one that fills them unless 15% cheaper
SMALL = 5e-6          # seconds: below this a GEMM need not fill the GPU
SCHEDULERS = 4        # warp schedulers an SM has (sm_80, sm_90); a warp is pinned to one of them


def scheduler_warps(ctas: int, warps_per_cta: int, sms: int) -> int:
    """The warps the busiest warp scheduler runs over a launch of `ctas` CTAs on `sms` SMs: its busiest SM
    takes ceil(CTAs / SMs) of them, whose warps spread over the SM's schedulers. A scheduler issues one
    instruction of one of its own warps a clock, so an SM holding 2 warps reaches at most half its peak
    (the static model, gpucnn.perf.model, prices every launch so; this planner prices GEMMs so)."""
    return ceil_div(ceil_div(ctas, sms) * warps_per_cta, SCHEDULERS)


def gemm_plan(m: int, n: int, k: int, tiles=GEMM_TILES, split: bool = True, min_steps: int = 2
              ) -> tuple[int, int, int, int]:
    """(BM, BN, splits, K steps per split) for a GEMM of M x N x K on this device.

    Every tile and split count is priced by what decides a GEMM's time on a GPU: the CTAs are spread
    over the SMs in waves and their warps over each SM's four schedulers, so the busiest scheduler runs
    `scheduler_warps` warps, each doing its share of a tile's work at the tile's main-loop efficiency;
    a split adds the partials written, read and reduced and one more launch. The cheapest wins, except
    that a plan leaving a scheduler without a warp (fewer warps than 4 x SMs: one warp an SM hides no
    latency) gives way to the cheapest plan that gives every scheduler one if that costs at most
    FILL_SLACK more and the GEMM is not tiny. So small grids are split over K (forward and data gradient
    too), wide problems take the wide tiles, small M or N the narrow ones. Splits keep >= `min_steps` K
    steps each; the result depends on the shape and the SM count alone (deterministic)."""
    sms = sm_count()
    steps = max(1, ceil_div(k, GEMM_BK))  # K = 0: one empty step (C = 0, then the epilogue)
    plans = []
    for bm, bn in tiles:
        tiles_mn = ceil_div(m, bm) * ceil_div(n, bn)
        eff = GEMM_EFFICIENCY[(bm, bn)]
        warps = GEMM_THREADS[(bm, bn)] // 32
        most = min(MAX_SPLITS, max(1, steps // min_steps)) if split else 1
        for want in range(1, most + 1):
            per = ceil_div(steps, want)
            splits = ceil_div(steps, per)
            if splits != want:
                continue
            ctas = tiles_mn * splits
            warp_flops = 2 * bm * bn * per * GEMM_BK / warps
            cost = scheduler_warps(ctas, warps, sms) * warp_flops / (eff * _SM_FLOPS / SCHEDULERS)
            if splits > 1:
                cost += (2 * splits + 1) * m * n * 4 / _BANDWIDTH + _LAUNCH
            plans.append(((cost, splits, -bm * bn), ctas * warps, (bm, bn, splits, per)))
    best = min(plans)
    if best[1] < SCHEDULERS * sms and best[0][0] >= SMALL:
        filling = [p for p in plans if p[1] >= SCHEDULERS * sms and p[0][0] <= FILL_SLACK * best[0][0]]
        if filling:
            best = min(filling)
    return best[2]


def gemm_threads(bm: int, bn: int) -> tuple[int]:
    """The block of a (BM, BN) GEMM tile."""
    return (GEMM_THREADS[(bm, bn)],)


def math_mode() -> str:
    """'true' when TF32 tensor cores are allowed (gpucnn.config.allow_tf32), as a template argument."""
    from ... import config
    return "true" if config.allow_tf32 else "false"


# --------------------------------------------------------------------------- step workspace and capture

class Arena:
    """Preallocated device memory for the temporaries of a training step.

    Inside ``workspace(arena)`` every ``empty`` is carved from the arena by a bump pointer that
    restarts at each ``workspace`` entry. A step asks for the same sizes in the same order every
    time, so it gets the same addresses every time, and the arena allocates (``allocations``
    counts it) only while the first step runs: from the second on, no device allocation at all,
    and the step's kernels can be captured as a CUDA graph and replayed.
    """

    ALIGN = 256  # bytes: every array starts 16-byte aligned (float4 loads) and more

    def __init__(self):
        self.chunks = []
        self.allocations = 0
        self._chunk = self._offset = 0

    def reset(self):
        self._chunk = self._offset = 0

    def take(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        need = ceil_div(nbytes, self.ALIGN) * self.ALIGN
        while self._chunk < len(self.chunks) and self._offset + need > self.chunks[self._chunk].size:
            self._chunk, self._offset = self._chunk + 1, 0
        if self._chunk == len(self.chunks):
            size = max(need, 4 << 20, 2 * (self.chunks[-1].size if self.chunks else 0))
            raw = xp.empty(size + self.ALIGN, np.uint8)
            start = (-pointer(raw)) % self.ALIGN
            self.chunks.append(raw[start:start + size])
            self.allocations += 1
        chunk = self.chunks[self._chunk]
        out = chunk[self._offset:self._offset + nbytes].view(dtype).reshape(shape)
        self._offset += need
        return out


_ARENA: Arena | None = None


class workspace:
    """Context manager: the outputs of every launcher inside come from `arena` (reset on entry)."""

    def __init__(self, arena: Arena):
        self.arena = arena

    def __enter__(self):
        global _ARENA
        self._previous, _ARENA = _ARENA, self.arena
        self.arena.reset()
        return self.arena

    def __exit__(self, *exc):
        global _ARENA
        _ARENA = self._previous
        return False


class Graph:
    """The operations of one captured call, replayed by ``launch()`` without running any Python.

    CUDA stream capture on a non-blocking stream of its own (so no other stream's work, the
    legacy default stream's included, is ordered into it or invalidates it): everything ``fn``
    enqueues (kernels, fills, device copies) is in the graph. Replays run on that stream; work
    that must be ordered with them goes on it too (``CapturedStep`` runs a whole epoch there).
    If ``fn`` raises (a host read inside the capture, say), the capture is ended and *that* error
    is raised, not the invalid-capture error that ending it reports.

    Emulated: ``emucupy`` records the launches, fills and device copies instead of running them,
    and refuses any host read, upload or synchronization during the capture, as CUDA does; a
    replay runs the records in order.
    """

    def __init__(self, fn, stream=None):
        self.stream = stream if stream is not None else new_stream()
        with self.stream:
            self._begin()
            try:
                fn()
            except BaseException:
                self._abort()
                raise
            self._graph = self._end()

    def _begin(self):
        if EMULATED:
            xp.begin_capture()
        else:  # pragma: no cover - needs a GPU
            self.stream.begin_capture()

    def _end(self):
        return xp.end_capture() if EMULATED else self.stream.end_capture()

    def _abort(self):
        """End a capture that failed; its own error (the capture is invalid) would hide the real one."""
        if EMULATED:
            xp.abort_capture()
            return
        try:  # pragma: no cover - needs a GPU
            self.stream.end_capture()
        except Exception:  # pragma: no cover
            pass

    def launch(self):
        if EMULATED:
            for op in self._graph:
                op()
        else:  # pragma: no cover - needs a GPU
            self._graph.launch(self.stream)

    @property
    def operations(self) -> int:
        """Operations in the graph (kernels, fills, copies; emulated: recorded; GPU: not counted, -1)."""
        return len(self._graph) if EMULATED else -1


def new_stream():
    """A non-blocking stream (not ordered with the legacy default stream)."""
    return xp.Stream(non_blocking=True) if EMULATED else xp.cuda.Stream(non_blocking=True)


def synchronize() -> None:
    """Wait for the device (emulated: refused inside a capture, as CUDA does)."""
    if EMULATED:
        xp.synchronize()
    else:  # pragma: no cover - needs a GPU
        xp.cuda.Device().synchronize()


def copy_into(dst, src) -> None:
    """Copy a batch (a host array: uploaded; a device array: a device copy) into a fixed input buffer.
    Only widening conversions (int32 labels into int64), never a silent narrowing."""
    if not np.can_cast(src.dtype, dst.dtype, "safe"):
        raise TypeError(f"an input buffer of dtype {dst.dtype} cannot take an array of dtype {src.dtype}")
    if isinstance(src, np.ndarray):
        dst.set(np.ascontiguousarray(src.reshape(dst.shape), dst.dtype))
    else:
        dst[...] = src.reshape(dst.shape)
