"""Every kernel launch of one training step, as the CuPy backend's launchers choose it, with no kernel run.

How the launches are found (the honest way, not a second copy of the launchers' rules): one training step
of the model (``gpucnn.train.train_step``: forward, fused softmax cross-entropy, backward, SGD with momentum
0.9, as ``gpucnn bench`` times it) runs at the requested batch through the CuPy backend, with
``_runtime.Family.launch`` replaced by a recorder. Each launcher therefore computes its own tile
(``gemm_tile``), split-K (``gemm_splits``), vector width, grid and block for the real shapes, and the
recorder keeps the instance name, grid, block and arguments instead of launching. Two things are
set for the target GPU: ``_runtime.sm_count`` returns its SM count (split-K and the bias gradient's
image groups depend on it), and ``gpucnn.config.allow_tf32`` follows ``--tf32``. Without CuPy and a GPU
the backend runs in its CPU emulation (GPUCNN_CUPY_EMULATE=1; arrays are host memory, the kernels are
never compiled for the CPU); no launcher reads array values, only shapes, dtypes and alignment
(16-byte: true of CuPy's and the emulator's allocations), so the record is the GPU's. The second
step is recorded (the first builds the optimizer's state and pointer tables).

Each record also carries what the model needs to size the work: the GEMM's M, N, K and the K steps one
CTA walks (from the launcher's own arguments, as kernels/conv.cu and dense.cu define the GEMMs), the
element count a grid-stride kernel covers (the n the launcher handed ``_runtime.grid_1d``), and the
compulsory bytes (every array argument read or written once; optimizer lists through their tables).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Launch:
    layer: str
    direction: str
    family: str
    kernel: str                  # the name expression, e.g. conv2d_fwd<128, 128, false, true>
    grid: tuple
    block: tuple
    bytes: int                   # compulsory bytes (model)
    work: int                    # elements the kernel's main loop covers, over the whole grid
    gemm: dict | None = None     # {"M", "N", "K", "bm", "bn", "ksteps", "bk"}: ksteps = K steps of bk per CTA
    flops: int = 0
    args: tuple = field(default=(), repr=False, compare=False)  # the arguments as launched (emulated arrays)
    steps_arg: int | None = None  # index in args of a GEMM's K steps a CTA walks (`per`), where it has one

    @property
    def ctas(self) -> int:
        return int(np.prod(self.grid))

    @property
    def threads(self) -> int:
        return int(np.prod(self.block))


@dataclass
class _State:
    context: list = field(default_factory=lambda: [("step", "")])
    last_grid: tuple | None = None
    raw: list = field(default_factory=list)


def _nbytes(a) -> int:
    return int(a.size) * int(np.dtype(a.dtype).itemsize)


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and getattr(a, "ndim", 0) >= 1


def _int_args(args) -> list[int]:
    """Positions of the integer arguments (a null pointer, np.uint64, is not one)."""
    return [i for i, a in enumerate(args) if isinstance(a, (np.integer, int)) and not isinstance(a, np.uint64)]


def steps_arg(kernel: str, args) -> int | None:
    """Index in `args` of the K steps per CTA (`per`) of a GEMM kernel of conv.cu / dense.cu, else None."""
    base = kernel.split("<")[0]
    if base.endswith("_direct") or not base.startswith(("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "linear_")):
        return None
    return _int_args(args)[1 if base in ("conv2d_fwd", "linear_fwd") else 0]  # after the forward's relu flag


def _gemm(kernel: str, args, grid=(1, 1, 1)) -> dict | None:
    """M, N, K of a GEMM kernel from its launch arguments (the GEMMs of kernels/conv.cu and dense.cu)."""
    base = kernel.split("<")[0]
    if not base.startswith(("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "linear_fwd", "linear_dgrad",
                            "linear_wgrad")):
        return None
    ints = [int(args[i]) for i in _int_args(args)]
    if base.endswith("_direct"):
        return _direct(base, int(kernel.split("<")[1].rstrip("> ")), ints, grid)
    bm, bn = (int(v) for v in kernel.split("<")[1].split(",")[:2])
    if base == "conv2d_fwd":    # (x, wg, b, out, relu, per, dims)
        per = ints[1]
        n, c, h, w, k, r, s, p, q = ints[2:11]
        m, nn, kk = n * p * q, k, c * r * s
    elif base == "conv2d_dgrad":  # (dy, wg, mask, out, per, dims)
        per = ints[0]
        n, c, h, w, k, r, s, p, q = ints[1:10]
        m, nn, kk = n * h * w, c, k * r * s
    elif base == "conv2d_wgrad":  # (x, dy, ws, per, dims)
        per = ints[0]
        n, c, h, w, k, r, s, p, q = ints[1:10]
        m, nn, kk = c * r * s, k, n * p * q
    elif base == "linear_fwd":    # (x, w, b, out, relu, per, B, I, O)
        per = ints[1]
        nb, i, o = ints[2:5]
        m, nn, kk = o, nb, i
    elif base == "linear_dgrad":  # (dy, w, out, per, B, I, O)
        per = ints[0]
        nb, i, o = ints[1:4]
        m, nn, kk = i, nb, o
    else:                         # linear_wgrad (x, dy, ws, per, B, I, O)
        per = ints[0]
        nb, i, o = ints[1:4]
        m, nn, kk = i, o, nb
    from ..backends.cupy._runtime import GEMM_BK
    steps = -(-kk // GEMM_BK)
    ksteps = min(per, steps)
    return {"M": m, "N": nn, "K": kk, "bm": bm, "bn": bn, "ksteps": ksteps, "bk": GEMM_BK,
            "macs_cta": ksteps * GEMM_BK * bm * bn}


def _direct(base: str, s: int, ints: list, grid) -> dict:
    """The convolution GEMM a direct kernel computes (M, N, K as the implicit GEMM would have them) and the
    multiply-adds its busiest block does, padding included (kernels/conv.cu, conv2d_*_direct)."""
    from ..backends.cupy.conv import DIRECT_TILE, DIRECT_WGRAD_ROWS
    th, tw = DIRECT_TILE
    if base == "conv2d_fwd_direct":   # (x, w, b, y, relu, C, H, W, K, R, P, Q, pt, pl); grid (tiles, N)
        c, h, w, k, r, p, q = ints[1:8]
        n = int(grid[1])
        crs = c * r * s
        return {"M": n * p * q, "N": k, "K": crs, "macs_cta": th * tw * (-(-k // 8) * 8) * crs}
    # conv2d_wgrad_direct (x, dy, out, N, C, H, W, K, R, P, Q, pt, pl, G); grid (blocks,)
    n, c, h, w, k, r, p, q = ints[0:8]
    crs = c * r * s
    tiles = n * -(-p // DIRECT_WGRAD_ROWS) * -(-q // tw)
    per_block = -(-tiles // int(grid[0]))
    return {"M": crs, "N": k, "K": n * p * q, "macs_cta": per_block * DIRECT_WGRAD_ROWS * tw * (-(-k // 8) * 8) * crs}


def _direction(kernel: str, in_backward: bool, previous: str) -> str:
    base = kernel.split("<")[0]
    for key, name in (("_fwd", "forward"), ("_dgrad", "data grad"), ("_wgrad", "weight grad"),
                      ("bias_grad", "bias grad")):
        if base.endswith(key) or key in base:
            if key == "_fwd" and in_backward:
                return "backward"  # a forward kernel recomputed in a backward (max-pool argmax)
            return name
    if base == "splitk_reduce":
        return previous.replace(" grad", " grad reduce") if "reduce" not in previous else previous
    return "backward" if in_backward else "forward"


def _record(state: _State, family: str, name: str, grid, block, args) -> Launch:
    layer, phase = state.context[-1]
    arrays = [a for a in args if _is_array(a)]
    nbytes = sum(_nbytes(a) for a in arrays)
    gemm = _gemm(name, args, grid)
    work = 0
    if state.last_grid is not None and state.last_grid[1:] == (tuple(grid), tuple(block)):
        work = state.last_grid[0]
    if family == "optim" and name != "adam_advance":
        lists, _ = arrays[0].shape if arrays[0].ndim == 2 else (1, 0)
        elements = int(np.asarray(arrays[1].get()).astype(np.int64).sum())
        nbytes = elements * 4 * (2 * lists - 1)  # every list read and written in place, the gradients only read
        work = elements
    if not work:
        work = max((int(a.size) for a in arrays), default=0)
    if layer == "step":  # outside every layer: the loss and the optimizer step
        phase = layer = "loss" if family == "softmax" else "optimizer" if family == "optim" else "step"
    previous = state.raw[-1].direction if state.raw else ""
    if phase in ("loss", "optimizer"):
        direction = "softmax-xent" if phase == "loss" else "sgd step"
    else:
        direction = _direction(name, phase == "backward", previous)
    flops = 2 * gemm["M"] * gemm["N"] * gemm["K"] if gemm else 0
    if gemm and name.startswith(("conv2d_wgrad", "linear_wgrad")) and (len(grid) < 3 or grid[2] > 1):
        nbytes = sum(_nbytes(a) for a in arrays)  # inputs plus the split-K workspace it writes
    launch = Launch(layer, direction, family, name, tuple(int(g) for g in grid), tuple(int(b) for b in block),
                    int(nbytes), int(work), gemm, int(flops), tuple(args), steps_arg(name, args))
    state.raw.append(launch)
    return launch


@contextlib.contextmanager
def _emulated_if_needed():
    """The CuPy backend in its CPU emulation unless it was already imported with CuPy (a GPU machine).

    ``_runtime`` reads GPUCNN_CUPY_EMULATE once, at import; the backend's probe reads it at each use, so it
    is set for the duration of the recording whenever the runtime is the emulated one, then restored."""
    before = os.environ.get("GPUCNN_CUPY_EMULATE")
    if "gpucnn.backends.cupy._runtime" not in sys.modules:
        os.environ["GPUCNN_CUPY_EMULATE"] = "1"
    from ..backends.cupy import _runtime
    if _runtime.EMULATED:
        os.environ["GPUCNN_CUPY_EMULATE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GPUCNN_CUPY_EMULATE", None)
        else:
            os.environ["GPUCNN_CUPY_EMULATE"] = before


def record_step(model_name: str, batch: int, sms: int, tf32: bool = False, backend: str = "cupy") -> list[Launch]:
    """The launches of one training step of zoo model `model_name` at `batch` on a GPU with `sms` SMs."""
    if backend == "numba":  # its @cuda.jit kernels, recorded in a child process (numba_side)
        if tf32:
            raise ValueError("the numba backend's kernels are FP32 only (no tensor-core path)")
        from .numba_side import record_step as record_numba
        return record_numba(model_name, batch, sms)
    if backend != "cupy":
        raise ValueError(f"gpucnn kernels models the cupy backend's CUDA C (kernels/*.cu) or the numba backend's "
                         f"@cuda.jit kernels, not {backend!r}")
    with _emulated_if_needed():
        from .. import config
        from ..backend import use_backend
        from ..train import train_step

        state = _State()
        model, x, y = training_model(model_name, batch)
        wrap_layers(model, state.context)
        with recording(state, sms), use_backend("cupy"), config.tf32(tf32):
            from .. import functional as F
            xd = F.asarray(x)
            for _ in range(2):
                state.raw.clear()
                train_step(model, xd, y)
        return list(state.raw)


def training_model(model_name: str, batch: int):
    """(model, x, y): zoo model `model_name` compiled with SGD (momentum 0.9, as gpucnn bench times a step) and
    a random batch of `batch` images and labels."""
    from .. import models
    from ..optim import SGD
    model = models.get(model_name, seed=0).compile(SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    return model, rng.random((batch,) + model.input_shape, dtype=np.float32), rng.integers(0, 10, batch)


def wrap_layers(model, context: list, item=lambda layer, phase: (layer.name, phase)) -> None:
    """Every layer's forward and backward push `item(layer, phase)` on `context` for the length of the call
    (the recorders name each launch after the innermost entry)."""
    for layer in model.layers:
        for method in ("forward", "backward"):
            inner = getattr(layer, method)

            def run(*a, _inner=inner, _item=item(layer, method), **k):
                context.append(_item)
                try:
                    return _inner(*a, **k)
                finally:
                    context.pop()
            setattr(layer, method, run)


@contextlib.contextmanager
def recording(state: _State, sms: int):
    """Inside: the CuPy launchers' launches are recorded into `state` instead of run, `sm_count` is `sms`
    (the GPU modelled), and `grid_1d` notes the element count of the grid-stride launch it sizes."""
    from ..backends.cupy import _runtime as rt
    original = (rt.Family.launch, rt.sm_count, rt.grid_1d)

    def launch(self, name, grid, block, args):
        if name not in self.names:
            raise ValueError(f"{name!r} is not a kernel instance of {self.family}.cu")
        _record(state, self.family, name, grid, block, args)
        state.last_grid = None

    def grid_1d(n, threads=rt.THREADS):
        out = original[2](n, threads)
        state.last_grid = (int(n),) + out
        return out

    rt.Family.launch, rt.sm_count, rt.grid_1d = launch, (lambda: sms), grid_1d
    try:
        yield state
    finally:
        rt.Family.launch, rt.sm_count, rt.grid_1d = original
