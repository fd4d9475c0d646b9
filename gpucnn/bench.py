"""Kernel profiling: every op x backend x shape, the device's ceilings, whole training steps.

    from gpucnn import bench
    doc = bench.run(models=["mnist_cnn"], batches=[32], sweep=True)   # a JSON-ready dict
    print(bench.format_table(doc)); bench.write_results(doc, "benchmarks/results")

What is timed, and how
----------------------
* Cases: the conv, max-pool and ReLU shapes of the zoo's nets (cifar10_vgg,
  mnist_cnn) at several batch sizes, forward and backward, plus an optional
  size sweep (``sweep_cases``). Counts per case (``Case.flops``, ``Case.bytes``)
  are the minimum work and the compulsory memory traffic: a multiply-add is 2
  FLOPs; every input is read once and every output written once, 4 bytes per
  float32 (max-pool indices are not counted).
* Clocks: a backend running on the CPU is timed with the monotonic clock
  (``time.perf_counter_ns``); a GPU backend with CUDA events recorded on its
  stream (``CudaEventTimer``). A figure is labelled GPU only when CUDA events
  measured it: ``check_clock`` refuses anything else, when a measurement is
  made and again when a table or file is written.
* The first call (compilation, caches, allocator warm-up) is timed apart
  (``first_call_ms``, wall clock), then ``warmup`` calls (``warmup_ms``), then
  the repeats, whose median is the figure. Repeats are at least
  ``min_repeats``, more for fast cases, until about ``min_time_s`` of work.
* Each repeat gets the next of several copies of its inputs, enough copies to
  span ``2 x`` the largest cache (CPU: last-level cache; GPU: L2), so a repeat
  does not find its inputs in the cache the previous one left warm
  (``rotation`` in each row says how many copies and how many bytes).
* Ceilings, measured in the same run on each device timed: a large copy
  (bytes/s, read + write) and a large FP32 matrix product (FLOP/s); on a GPU
  also a TF32 one. Each row's ``pct_peak_flops`` and ``pct_peak_bandwidth``
  are its FLOP/s and bytes/s as percentages of them.
* Reference column: PyTorch on the same device and case, when PyTorch is
  importable: on a GPU cuDNN (convolutions) and PyTorch's CUDA kernels
  (pooling, ReLU), timed with CUDA events, TF32 as ``gpucnn.config.allow_tf32``;
  on the CPU PyTorch's CPU kernels (oneDNN), labelled as such, never cuDNN.

A backend running in a simulator (Numba's CUDA simulator, the CuPy backend's
host emulation) is never timed (its figures would be CPU emulation); it is
listed under ``skipped`` with the reason.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import config
from . import functional as F
from .backend import current_backend, info, simulated, use_backend

SCHEMA = "gpucnn.bench/1"
CPU_CLOCK = "cpu-monotonic"   # time.perf_counter_ns around the call
GPU_CLOCK = "cuda-events"     # start/end CUDA events on the stream the work runs on
DEVICES = ("cpu", "gpu")
BACKEND_DEVICE = {"numpy": "cpu", "numba": "gpu", "cupy": "gpu"}
OPS = ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "relu", "relu_backward")
BENCH_MODELS = ("cifar10_vgg", "mnist_cnn")
F32 = 4  # bytes


class GpuFigureError(ValueError):
    """A figure labelled GPU that CUDA events did not measure."""


def check_clock(device: str, clock: str) -> None:
    """Refuse a GPU label on anything but a CUDA-event measurement (and unknown devices or clocks)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if clock not in (CPU_CLOCK, GPU_CLOCK):
        raise ValueError(f"clock must be {CPU_CLOCK!r} or {GPU_CLOCK!r}, got {clock!r}")
    if device == "gpu" and clock != GPU_CLOCK:
        raise GpuFigureError(f"refusing a GPU figure measured with the {clock!r} clock: only CUDA events "
                             f"({GPU_CLOCK!r}) time GPU work; this is not a GPU measurement")
    if device == "cpu" and clock == GPU_CLOCK:
        raise ValueError("a CUDA-event time is a GPU figure; it cannot be labelled cpu")


# --------------------------------------------------------------------------- cases and their counts

@dataclass(frozen=True)
class Case:
    """One op on one shape. Input x is (n, c, h, w); conv: k filters r x s; pool: window r x s, stride `stride`."""

    op: str
    n: int
    c: int
    h: int
    w: int
    k: int = 0
    r: int = 1
    s: int = 1
    stride: int = 1
    pad: int = 0
    source: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; benchmarked ops: {', '.join(OPS)}")

    @property
    def family(self) -> str:
        return self.op.replace("_backward", "")

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.family == "relu":
            return self.h, self.w
        pad = self.pad if self.family == "conv2d" else 0
        return (self.h + 2 * pad - self.r) // self.stride + 1, (self.w + 2 * pad - self.s) // self.stride + 1

    @property
    def x_size(self) -> int:
        return self.n * self.c * self.h * self.w

    @property
    def y_size(self) -> int:
        p, q = self.out_hw
        return self.n * (self.k if self.family == "conv2d" else self.c) * p * q

    @property
    def flops(self) -> int:
        """Floating-point operations (multiply-add = 2; max = 1; bias add = 1 per output)."""
        macs = self.y_size * self.c * self.r * self.s if self.family == "conv2d" else 0
        if self.op == "conv2d":
            return 2 * macs + self.y_size                 # products and sums, bias
        if self.op == "conv2d_backward":
            return 2 * macs + 2 * macs + self.y_size      # dx, dw, db
        if self.op == "max_pool2d":
            return self.y_size * (self.r * self.s - 1)    # comparisons
        if self.op == "max_pool2d_backward":
            return 0                                      # a scatter through the recorded indices
        return self.x_size                                # relu: a max; relu_backward: a select

    @property
    def bytes(self) -> int:
        """Compulsory memory traffic: every input read once, every output written once (float32)."""
        wsize = self.k * self.c * self.r * self.s
        if self.op == "conv2d":
            return F32 * (self.x_size + wsize + self.k + self.y_size)
        if self.op == "conv2d_backward":       # read dy, x, w; write dx, dw, db
            return F32 * (self.y_size + self.x_size + wsize + self.x_size + wsize + self.k)
        if self.op == "max_pool2d":            # read x, write y
            return F32 * (self.x_size + self.y_size)
        if self.op == "max_pool2d_backward":   # read dy, write dx
            return F32 * (self.y_size + self.x_size)
        if self.op == "relu":
            return F32 * 2 * self.x_size
        return F32 * 3 * self.x_size           # relu_backward: read dy, x; write dx

    @property
    def shape_text(self) -> str:
        x = f"{self.n}x{self.c}x{self.h}x{self.w}"
        if self.family == "conv2d":
            return f"{x} k{self.k} {self.r}x{self.s} s{self.stride} p{self.pad}"
        if self.family == "max_pool2d":
            return f"{x} {self.r}x{self.s} s{self.stride}"
        return x


def model_cases(model_names=BENCH_MODELS, batches=(1, 32, 128), ops=OPS) -> list[Case]:
    """The conv, pool and ReLU shapes of the named zoo nets at each batch size (duplicates dropped)."""
    from . import models
    from .layers import Conv2D, MaxPool2D
    out, seen = [], set()

    def add(case):
        key = asdict(case) | {"source": ""}
        if case.op in ops and tuple(key.items()) not in seen:
            seen.add(tuple(key.items()))
            out.append(case)

    for name in model_names:
        if name not in BENCH_MODELS:
            raise ValueError(f"bench takes models {', '.join(BENCH_MODELS)}, got {name!r}")
        net = models.get(name, seed=0)
        for batch in batches:
            for layer in net.layers:
                if not isinstance(layer, (Conv2D, MaxPool2D)):
                    continue
                c, h, w = layer.input_shape
                src = f"{name} {layer.name}"
                if isinstance(layer, Conv2D):
                    if layer.kernel_size[0] != layer.kernel_size[1] or layer.strides[0] != layer.strides[1]:
                        raise ValueError(f"{src}: bench cases take square kernels and strides")
                    pt, pb, pl, pr = layer._pads
                    if not pt == pb == pl == pr:
                        raise ValueError(f"{src}: bench cases take symmetric padding, got {layer._pads}")
                    common = dict(n=batch, c=c, h=h, w=w, k=layer.filters, r=layer.kernel_size[0],
                                  s=layer.kernel_size[1], stride=layer.strides[0], pad=pt, source=src)
                    add(Case("conv2d", **common))
                    add(Case("conv2d_backward", **common))
                    if layer.activation == "relu":
                        k, p, q = layer.output_shape
                        add(Case("relu", batch, k, p, q, source=src + " relu"))
                        add(Case("relu_backward", batch, k, p, q, source=src + " relu"))
                elif isinstance(layer, MaxPool2D):
                    common = dict(n=batch, c=c, h=h, w=w, r=layer.pool_size[0], s=layer.pool_size[1],
                                  stride=layer.strides[0], source=src)
                    add(Case("max_pool2d", **common))
                    add(Case("max_pool2d_backward", **common))
    return out


def sweep_cases(sizes=(8, 16, 32, 64, 128), batch=8, channels=32, ops=OPS) -> list[Case]:
    """A size sweep: a 'same' 3x3 conv, a 2x2 max pool and ReLU on batch x channels x size x size."""
    out = []
    for size in sizes:
        for op in ops:
            fam = op.replace("_backward", "")
            if fam == "conv2d":
                out.append(Case(op, batch, channels, size, size, k=channels, r=3, s=3, pad=1, source="sweep"))
            elif fam == "max_pool2d":
                out.append(Case(op, batch, channels, size, size, r=2, s=2, stride=2, source="sweep"))
            else:
                out.append(Case(op, batch, channels, size, size, source="sweep"))
    return out


# --------------------------------------------------------------------------- timing

class CpuTimer:
    """Wall time of a call on the monotonic clock: for work that runs on the CPU."""

    device, clock = "cpu", CPU_CLOCK

    def sync(self):
        pass

    def time_ms(self, fn) -> float:
        t = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t) / 1e6


class CudaEventTimer:
    """GPU time of a call between two CUDA events on the current stream (cupy, numba or torch)."""

    device, clock = "gpu", GPU_CLOCK

    def __init__(self, lib: str):
        if lib not in ("cupy", "numba", "torch"):
            raise ValueError(f"CUDA events come from cupy, numba or torch, not {lib!r}")
        self.lib = lib

    def sync(self):
        if self.lib == "cupy":
            import cupy
            cupy.cuda.get_current_stream().synchronize()
        elif self.lib == "numba":
            from numba import cuda
            cuda.synchronize()
        else:
            import torch
            torch.cuda.synchronize()

    def time_ms(self, fn) -> float:
        if self.lib == "cupy":
            import cupy
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(cupy.cuda.get_elapsed_time(start, end))
        if self.lib == "numba":
            from numba import cuda
            start, end = cuda.event(timing=True), cuda.event(timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(cuda.event_elapsed_time(start, end))
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def timer_for_backend(name: str):
    if simulated(name):
        raise ValueError(f"backend {name!r} runs in a simulator (CPU emulation of its kernels): never timed")
    return CpuTimer() if BACKEND_DEVICE[name] == "cpu" else CudaEventTimer(name)


@dataclass
class Timing:
    """Times of one call: the first call, the warm-up calls and the repeats (ms), with the clock that took them."""

    device: str
    clock: str
    times_ms: list
    first_call_ms: float
    warmup_ms: list = field(default_factory=list)

    def __post_init__(self):
        check_clock(self.device, self.clock)
        if not self.times_ms:
            raise ValueError("a timing needs at least one repeat")

    @property
    def median_ms(self) -> float:
        return median(self.times_ms)


def median(values) -> float:
    """The middle value (the mean of the two middle values for an even count)."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("median of no values")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def measure(call, inputs: list, timer, warmup=2, min_repeats=10, max_repeats=100, min_time_s=0.3) -> Timing:
    """Time call(*inputs[i]) rotating over the input copies: first call, warm-up, then the repeats."""
    t = time.perf_counter_ns()
    call(*inputs[0])
    timer.sync()
    first = (time.perf_counter_ns() - t) / 1e6
    i = 1
    warm = []
    for _ in range(warmup):
        warm.append(timer.time_ms(lambda a=inputs[i % len(inputs)]: call(*a)))
        i += 1
    estimate = median(warm) if warm else first
    repeats = int(min(max_repeats, max(min_repeats, math.ceil(min_time_s * 1e3 / max(estimate, 1e-3)))))
    times = []
    for _ in range(repeats):
        times.append(timer.time_ms(lambda a=inputs[i % len(inputs)]: call(*a)))
        i += 1
    return Timing(timer.device, timer.clock, times, first, warm)


def rates(flops: int, nbytes: int, seconds: float, ceilings: dict | None, tf32: bool = False) -> dict:
    """FLOP/s and bytes/s of a case and their percentages of the device's measured ceilings."""
    if seconds <= 0:
        raise ValueError(f"a time must be positive, got {seconds}")
    flop_s, byte_s = flops / seconds, nbytes / seconds
    peak_f = peak_b = None
    if ceilings:
        peak_f = ceilings.get("tf32_flop_per_s") if tf32 else ceilings.get("fp32_flop_per_s")
        peak_b = ceilings.get("copy_byte_per_s")
    return {
        "flop_per_s": flop_s,
        "byte_per_s": byte_s,
        "intensity": flops / nbytes if nbytes else None,
        "pct_peak_flops": 100.0 * flop_s / peak_f if peak_f and flops else None,
        "pct_peak_bandwidth": 100.0 * byte_s / peak_b if peak_b else None,
    }


# --------------------------------------------------------------------------- inputs and implementations

def host_inputs(case: Case, rng) -> dict:
    """One set of float32 host arrays for a case (normal draws: no zeros, no ties to speak of)."""
    p, q = case.out_hw
    ch_out = case.k if case.family == "conv2d" else case.c
    d = {"x": rng.standard_normal((case.n, case.c, case.h, case.w), dtype=np.float32),
         "dy": rng.standard_normal((case.n, ch_out, p, q), dtype=np.float32)}
    if case.family == "conv2d":
        d["w"] = rng.standard_normal((case.k, case.c, case.r, case.s), dtype=np.float32) * 0.1
        d["b"] = rng.standard_normal(case.k, dtype=np.float32)
    return d


def _input_bytes(case: Case) -> int:
    names = {"conv2d": ("x", "w", "b"), "conv2d_backward": ("dy", "x", "w"), "max_pool2d": ("x",),
             "max_pool2d_backward": ("dy", "x"), "relu": ("x",), "relu_backward": ("dy", "x")}[case.op]
    p, q = case.out_hw
    sizes = {"x": case.x_size, "dy": case.y_size, "w": case.k * case.c * case.r * case.s, "b": case.k}
    return F32 * sum(sizes[n] for n in names) or F32


def gpucnn_impl(case: Case):
    """(prepare, call) running a case through gpucnn.functional on the current backend."""
    st, pad, ks = case.stride, case.pad, (case.r, case.s)
    if case.op == "conv2d":
        return (lambda d: (F.asarray(d["x"]), F.asarray(d["w"]), F.asarray(d["b"])),
                lambda x, w, b: F.conv2d(x, w, b, stride=st, padding=pad))
    if case.op == "conv2d_backward":
        return (lambda d: (F.asarray(d["dy"]), F.asarray(d["x"]), F.asarray(d["w"])),
                lambda dy, x, w: F.conv2d_backward(dy, x, w, stride=st, padding=pad))
    if case.op == "max_pool2d":
        return (lambda d: (F.asarray(d["x"]),), lambda x: F.max_pool2d(x, ks, st, return_indices=True))

    if case.op == "max_pool2d_backward":
        def prep(d):
            x = F.asarray(d["x"])
            return F.asarray(d["dy"]), x, F.max_pool2d(x, ks, st, return_indices=True)[1]
        return prep, lambda dy, x, idx: F.max_pool2d_backward(dy, x, ks, st, indices=idx)
    if case.op == "relu":
        return (lambda d: (F.asarray(d["x"]),), F.relu)
    return (lambda d: (F.asarray(d["dy"]), F.asarray(d["x"])), F.relu_backward)


def torch_impl(case: Case, device: str):
    """(prepare, call) running a case through PyTorch's own kernels on `device` ('cpu' or 'cuda')."""
    import torch
    aten = torch.ops.aten
    st, pad, ks = [case.stride] * 2, [case.pad] * 2, [case.r, case.s]

    def t(a):
        return torch.from_numpy(a).to(device)
    if case.op == "conv2d":
        return (lambda d: (t(d["x"]), t(d["w"]), t(d["b"])),
                lambda x, w, b: torch.nn.functional.conv2d(x, w, b, st, pad))
    if case.op == "conv2d_backward":
        return (lambda d: (t(d["dy"]), t(d["x"]), t(d["w"])),
                lambda dy, x, w: aten.convolution_backward(dy, x, w, [case.k], st, pad, [1, 1], False, [0, 0], 1,
                                                           [True, True, True]))
    if case.op == "max_pool2d":
        return (lambda d: (t(d["x"]),), lambda x: aten.max_pool2d_with_indices(x, ks, st))
    if case.op == "max_pool2d_backward":
        def prep(d):
            x = t(d["x"])
            return t(d["dy"]), x, aten.max_pool2d_with_indices(x, ks, st)[1]
        return prep, lambda dy, x, idx: aten.max_pool2d_with_indices_backward(dy, x, ks, st, [0, 0], [1, 1], False,
                                                                               idx)
    if case.op == "relu":
        return (lambda d: (t(d["x"]),), torch.relu)
    return (lambda d: (t(d["dy"]), t(d["x"])), lambda dy, x: aten.threshold_backward(dy, x, 0))


def torch_reference(device: str):
    """(label, timer, torch device) of PyTorch on a gpucnn device kind, or (None, reason, None)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed", None
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return f"PyTorch {torch.__version__} CPU", CpuTimer(), "cpu"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA here", None
    cudnn = torch.backends.cudnn.version()
    return f"cuDNN {cudnn} / PyTorch {torch.__version__} CUDA", CudaEventTimer("torch"), "cuda"


# --------------------------------------------------------------------------- ceilings

def cache_bytes(device: str) -> int:
    """The largest cache of the device: CPU last-level cache (sysfs), GPU L2 (CUDA attribute)."""
    if device == "gpu":
        try:
            import cupy
            return int(cupy.cuda.Device().attributes["L2CacheSize"])
        except Exception:
            from numba import cuda
            return int(cuda.get_current_device().L2_CACHE_SIZE)
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * mult)
    return best or 32 << 20


def cpu_ceilings(copy_mb=256, matmul_n=2048, repeats=5) -> dict:
    """A large memory copy and an FP32 matrix product on the CPU (NumPy and its BLAS)."""
    timer = CpuTimer()
    src = np.ones(copy_mb << 18, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy_s = median([timer.time_ms(lambda: np.copyto(dst, src)) for _ in range(repeats)]) / 1e3
    a = np.random.default_rng(0).standard_normal((matmul_n, matmul_n), dtype=np.float32)
    b = a.T.copy()
    np.matmul(a, b)
    mm_s = median([timer.time_ms(lambda: np.matmul(a, b)) for _ in range(repeats)]) / 1e3
    return {"device": "cpu", "clock": CPU_CLOCK, "copy_bytes": 2 * src.nbytes, "copy_byte_per_s": 2 * src.nbytes / copy_s,
            "matmul_n": matmul_n, "fp32_flop_per_s": 2 * matmul_n ** 3 / mm_s, "tf32_flop_per_s": None,
            "how": f"np.copyto of {copy_mb} MiB (read + write counted) and np.matmul {matmul_n}^3, "
                   f"median of {repeats}; TF32 is a GPU tensor-core mode: not applicable"}


def gpu_ceilings(copy_mb=1024, matmul_n=8192, repeats=10) -> dict:  # pragma: no cover - needs a GPU
    """A large device-to-device copy and FP32 / TF32 matrix products, with CUDA events (CuPy, else PyTorch)."""
    try:
        import cupy
        from cupy._core import _routines_linalg as lin
        timer = CudaEventTimer("cupy")
        src = cupy.ones(copy_mb << 18, cupy.float32)
        dst = cupy.empty_like(src)
        a = cupy.random.standard_normal((matmul_n, matmul_n), dtype=cupy.float32)
        b = a.T.copy()

        def matmul_s(compute_type):
            old = lin.get_compute_type(cupy.float32)
            lin.set_compute_type(cupy.float32, compute_type)
            try:
                cupy.matmul(a, b)
                return median([timer.time_ms(lambda: cupy.matmul(a, b)) for _ in range(repeats)]) / 1e3
            finally:
                lin.set_compute_type(cupy.float32, old)

        copy = lambda: cupy.copyto(dst, src)  # noqa: E731
        fp32, tf32 = matmul_s(lin.COMPUTE_TYPE_PEDANTIC), matmul_s(lin.COMPUTE_TYPE_TF32)
        how = "CuPy"
    except ImportError:
        import torch
        timer = CudaEventTimer("torch")
        src = torch.ones(copy_mb << 18, device="cuda")
        dst = torch.empty_like(src)
        a = torch.randn(matmul_n, matmul_n, device="cuda")
        b = a.T.contiguous()

        def matmul_s(allow):
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = allow
            try:
                torch.matmul(a, b)
                return median([timer.time_ms(lambda: torch.matmul(a, b)) for _ in range(repeats)]) / 1e3
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old

        copy = lambda: dst.copy_(src)  # noqa: E731
        fp32, tf32 = matmul_s(False), matmul_s(True)
        how = "PyTorch"
    copy()
    copy_s = median([timer.time_ms(copy) for _ in range(repeats)]) / 1e3
    nbytes = 2 * (copy_mb << 20)
    return {"device": "gpu", "clock": GPU_CLOCK, "copy_bytes": nbytes, "copy_byte_per_s": nbytes / copy_s,
            "matmul_n": matmul_n, "fp32_flop_per_s": 2 * matmul_n ** 3 / fp32,
            "tf32_flop_per_s": 2 * matmul_n ** 3 / tf32,
            "how": f"{how}: device-to-device copy of {copy_mb} MiB (read + write counted), FP32 and TF32 "
                   f"matmul {matmul_n}^3, CUDA events, median of {repeats}"}


# --------------------------------------------------------------------------- environment

def _version(dist: str):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(gpu: bool) -> dict:
    """Host, GPU (when one was used), driver and package versions."""
    from . import __version__
    from ._blas import describe
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "host": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                 "last_level_cache_bytes": cache_bytes("cpu")},
        "gpu": None,
        "versions": {"gpucnn": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     "blas": describe(), "numba": _version("numba"), "numba-cuda": _version("numba-cuda"),
                     "cupy": _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy"),
                     "torch": _version("torch")},
    }
    if gpu:  # pragma: no cover - needs a GPU
        env["gpu"] = gpu_info()
        env["versions"]["driver"] = env["gpu"].get("driver")
    return env


def gpu_info() -> dict:  # pragma: no cover - needs a GPU
    out = {}
    try:
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        out = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
               "compute_capability": dev.compute_capability, "memory_bytes": int(props["totalGlobalMem"]),
               "l2_bytes": int(props["l2CacheSize"]), "sms": int(props["multiProcessorCount"]),
               "driver": cupy.cuda.runtime.driverGetVersion(), "runtime": cupy.cuda.runtime.runtimeGetVersion()}
    except ImportError:
        from numba import cuda
        dev = cuda.get_current_device()
        out = {"name": dev.name.decode() if isinstance(dev.name, bytes) else dev.name,
               "compute_capability": ".".join(map(str, dev.compute_capability)),
               "l2_bytes": int(dev.L2_CACHE_SIZE), "sms": int(dev.MULTIPROCESSOR_COUNT),
               "driver": cuda.cudadrv.driver.driver.get_version()}
    try:
        import subprocess
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip() or out.get("driver")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# --------------------------------------------------------------------------- the run

def plan_backends(requested=None) -> tuple[list[str], list[dict]]:
    """The backends to time and, for each left out, why (not available here, or a simulator)."""
    table = info()
    names = list(requested) if requested else list(table)
    run_, skipped = [], []
    for name in names:
        if name not in table:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(table)}")
        entry = table[name]
        if not entry["available"]:
            skipped.append({"backend": name, "reason": entry["reason"]})
        elif entry["simulated"]:
            how = ("Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)" if name == "numba"
                   else "CPU emulation of its CUDA C (GPUCNN_CUPY_EMULATE=1)")
            skipped.append({"backend": name, "reason": f"runs in {how}: its kernels are emulated on the CPU, so "
                            "their times say nothing about a GPU"})
        else:
            run_.append(name)
    return run_, skipped


def _copies(nbytes: int, rotate_bytes: int, max_copies: int) -> int:
    return int(max(2, min(max_copies, math.ceil(rotate_bytes / max(nbytes, 1)))))


def time_case(case: Case, impl, timer, rng, rotate_bytes: int, max_copies=64, **measure_kw) -> tuple[Timing, dict]:
    """Time one case through (prepare, call) = impl with rotated input copies."""
    prepare, call = impl
    copies = _copies(_input_bytes(case), rotate_bytes, max_copies)
    host = host_inputs(case, rng)
    inputs = []
    for i in range(copies):
        inputs.append(prepare(host if i == 0 else {k: v.copy() for k, v in host.items()}))
    timer.sync()
    rotation = {"copies": copies, "bytes": copies * _input_bytes(case)}
    return measure(call, inputs, timer, **measure_kw), rotation


def run(backends=None, ops=OPS, models=BENCH_MODELS, batches=(1, 32, 128), sweep=False, sweep_sizes=None,
        reference=True, warmup=2, min_repeats=10, max_repeats=100, min_time_s=0.3, step=True, step_models=None,
        step_batch=128, step_warmup=2, step_repeats=10, ceilings_small=False, rotate_bytes=None, progress=True, seed=0,
        command=None) -> dict:
    """Time every case on every runnable backend (and PyTorch beside it); return the results document."""
    names, skipped = plan_backends(backends)
    cases = model_cases(models, batches, ops) if models else []
    if sweep:
        cases += sweep_cases(sizes=sweep_sizes or (8, 16, 32, 64, 128), ops=ops)
    devices = sorted({BACKEND_DEVICE[n] for n in names})
    ceilings = {}
    for dev in devices:
        if dev == "cpu":
            ceilings["cpu"] = cpu_ceilings(64, 1024, 3) if ceilings_small else cpu_ceilings()
        else:  # pragma: no cover - needs a GPU
            ceilings["gpu"] = gpu_ceilings(256, 4096, 5) if ceilings_small else gpu_ceilings()
    refs = {}
    for dev in devices:
        label, timer, tdev = torch_reference(dev) if reference else (None, "not asked for (--no-reference)", None)
        refs[dev] = (label, timer, tdev)
        if label is None:
            skipped.append({"backend": f"reference on {dev}", "reason": timer})
    rng = np.random.default_rng(seed)
    kw = dict(warmup=warmup, min_repeats=min_repeats, max_repeats=max_repeats, min_time_s=min_time_s)
    rows = []
    jobs = [(case, name) for case in cases for name in names]
    bar = _progress(jobs, progress, "cases")
    ref_done = {}
    tf32 = bool(config.allow_tf32)
    for case, name in bar:
        dev = BACKEND_DEVICE[name]
        rot = rotate_bytes if rotate_bytes is not None else 2 * cache_bytes(dev)
        with use_backend(name):
            timing, rotation = time_case(case, gpucnn_impl(case), timer_for_backend(name), rng, rot, **kw)
        row = _row(case, name, f"gpucnn {name}", timing, rotation, ceilings.get(dev),
                   tf32 and name == "cupy" and case.family == "conv2d")
        label, rtimer, tdev = refs[dev]
        if label is not None:
            key = (case, dev)
            if key not in ref_done:
                with _torch_tf32(tdev, tf32):
                    rt, rrot = time_case(case, torch_impl(case, tdev), rtimer, rng, rot, **kw)
                ref_done[key] = _row(case, "torch", label, rt, rrot, ceilings.get(dev),
                                     tf32 and dev == "gpu" and case.family == "conv2d")
            ref = ref_done[key]
            row["reference"] = {k: ref[k] for k in ("label", "median_ms", "flop_per_s", "byte_per_s", "pct_peak_flops",
                                                    "pct_peak_bandwidth", "device", "clock", "repeats",
                                                    "first_call_ms", "rotation")}
            row["vs_reference"] = row["median_ms"] / ref["median_ms"]
        rows.append(row)
    doc = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        **environment("gpu" in devices),
        "settings": {"warmup": warmup, "min_repeats": min_repeats, "max_repeats": max_repeats,
                     "min_time_s": min_time_s, "rotate_bytes": rotate_bytes, "allow_tf32": tf32,
                     "backends_timed": names, "dtype": "float32"},
        "ceilings": ceilings,
        "skipped": skipped,
        "cases": rows,
        "train_step": train_step_bench(step_models or models or BENCH_MODELS, step_batch, names, step_warmup, step_repeats,
                                       reference) if step else [],
    }
    validate(doc)
    return doc


def _progress(items, enabled, desc):
    if not enabled or not items:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)


class _torch_tf32:
    """PyTorch's cuDNN and matmul TF32 switches set as gpucnn.config.allow_tf32 (PyTorch enables cuDNN TF32 by default)."""

    def __init__(self, tdev, enabled):
        self.on = tdev == "cuda"
        self.enabled = enabled

    def __enter__(self):
        if self.on:  # pragma: no cover - needs a GPU
            import torch
            self.old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc):
        if self.on:  # pragma: no cover - needs a GPU
            import torch
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old
        return False


def _row(case: Case, impl: str, label: str, timing: Timing, rotation: dict, ceilings, tf32: bool) -> dict:
    med = timing.median_ms
    return {
        "op": case.op, "source": case.source, "shape": case.shape_text, "n": case.n, "c": case.c, "h": case.h,
        "w": case.w, "k": case.k, "r": case.r, "s": case.s, "stride": case.stride, "pad": case.pad,
        "impl": impl, "label": label, "device": timing.device, "clock": timing.clock, "tf32": tf32,
        "flops": case.flops, "bytes": case.bytes,
        "median_ms": med, "min_ms": min(timing.times_ms), "repeats": len(timing.times_ms),
        "times_ms": [round(t, 6) for t in timing.times_ms],
        "first_call_ms": timing.first_call_ms, "warmup_ms": timing.warmup_ms, "rotation": rotation,
        **rates(case.flops, case.bytes, med / 1e3, ceilings, tf32),
    }


# --------------------------------------------------------------------------- whole training steps

def torch_net(name: str):
    """The zoo net `name` built from torch.nn layers (same architecture; PyTorch's own initialization)."""
    from torch import nn
    from . import models
    layers = []
    for layer in models.get(name, seed=0).layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            layers.append(nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel_size, layer.strides,
                                    padding=layer.padding))
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "MaxPool2D":
            layers.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
        elif kind == "Dense":  # the final softmax is fused into the loss, as in gpucnn's training
            layers.append(nn.Linear(layer.input_shape[0], layer.units))
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "Dropout":
            layers.append(nn.Dropout(layer.rate))
        else:
            raise ValueError(f"torch_net: no torch counterpart written for {kind}")
    return nn.Sequential(*layers)


def gpucnn_step(name: str, batch: int):
    """A closure running one gpucnn training step (forward, loss, backward, SGD with momentum) on the current backend."""
    from . import models
    from .optim import SGD
    from .train import train_step
    model = models.get(name, seed=0).compile(SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + model.input_shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if current_backend() != "numpy":
        x = F.asarray(x)  # on the device once, as a data loader that prefetches would leave it
    return lambda: train_step(model, x, y)


def gpucnn_graph_step(name: str, batch: int):
    """A closure running the same step as gpucnn_step through fit's captured CUDA graph (cupy backend):
    the first two calls are plain steps, the third captures and launches, every later call is a replay."""
    from . import models
    from .capture import CapturedStep
    from .optim import SGD
    model = models.get(name, seed=0).compile(SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = F.asarray(rng.random((batch,) + model.input_shape, dtype=np.float32))
    y = F.asarray(rng.integers(0, 10, batch))
    captured = CapturedStep(model, batch)

    def step():
        captured.step(x, y)
    step.captured = captured
    return step


def torch_step(name: str, batch: int, device="cpu", graphs=False):
    """A closure running one PyTorch training step of the same net; graphs=True replays a captured CUDA graph."""
    import torch
    from torch import nn
    net = torch_net(name).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    shape = {"cifar10_vgg": (3, 32, 32), "mnist_cnn": (1, 28, 28)}.get(name)
    if shape is None:
        from . import models
        shape = models.get(name).input_shape
    x = torch.rand((batch,) + tuple(shape), device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    if not graphs:
        return step
    # needs a GPU: the whole-network capture of PyTorch's CUDA graphs documentation
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return graph.replay


def _step_row(model, batch, impl, label, timing: Timing) -> dict:
    med = timing.median_ms
    return {"model": model, "batch": batch, "impl": impl, "label": label, "device": timing.device,
            "clock": timing.clock, "median_ms": med, "images_per_s": batch / (med / 1e3),
            "repeats": len(timing.times_ms), "times_ms": [round(t, 6) for t in timing.times_ms],
            "first_call_ms": timing.first_call_ms, "warmup_ms": timing.warmup_ms}


def train_step_bench(models=BENCH_MODELS, batch=128, backends=None, warmup=2, repeats=10, reference=True) -> list:
    """Images per second of a whole training step, per backend, beside PyTorch eager and PyTorch + CUDA graphs."""
    names = list(backends) if backends is not None else plan_backends()[0]
    kw = dict(warmup=warmup, min_repeats=repeats, max_repeats=repeats, min_time_s=0)
    rows = []
    for model in models:
        for name in names:
            if simulated(name):
                raise ValueError(f"backend {name!r} runs in the CUDA simulator: not benchmarked")
            with use_backend(name):
                timing = measure(gpucnn_step(model, batch), [()], timer_for_backend(name), **kw)
            rows.append(_step_row(model, batch, name, f"gpucnn {name}", timing))
            if name == "cupy":  # pragma: no cover - needs a GPU (warm-up covers the plain steps and the capture)
                with use_backend(name):
                    timing = measure(gpucnn_graph_step(model, batch), [()], timer_for_backend(name),
                                     **dict(kw, warmup=max(2, warmup)))
                rows.append(_step_row(model, batch, "cupy-cuda-graph", "gpucnn cupy CUDA graph", timing))
        if not reference:
            continue
        for dev in sorted({BACKEND_DEVICE[n] for n in names}):
            label, timer, tdev = torch_reference(dev)
            if label is None:
                rows.append({"model": model, "batch": batch, "impl": "torch", "label": f"PyTorch on {dev}",
                             "device": dev, "not_measured": timer})
                continue
            version = label.split("PyTorch ")[1].split()[0]
            name = f"PyTorch {version} {'CUDA' if tdev == 'cuda' else 'CPU'} eager"
            with _torch_tf32(tdev, bool(config.allow_tf32)):
                rows.append(_step_row(model, batch, "torch", name, measure(torch_step(model, batch, tdev), [()],
                                                                           timer, **kw)))
                if tdev == "cuda":  # pragma: no cover - needs a GPU
                    rows.append(_step_row(model, batch, "torch-cuda-graphs", f"PyTorch {version} CUDA graphs",
                                          measure(torch_step(model, batch, tdev, graphs=True), [()], timer, **kw)))
            if tdev == "cpu":
                rows.append({"model": model, "batch": batch, "impl": "torch-cuda-graphs",
                             "label": "PyTorch CUDA graphs", "device": "gpu",
                             "not_measured": "CUDA graphs need a CUDA GPU; none here"})
    return rows


# --------------------------------------------------------------------------- checking, tables, files

_CASE_KEYS = {"op": str, "shape": str, "impl": str, "label": str, "device": str, "clock": str, "flops": int,
              "bytes": int, "median_ms": float, "repeats": int, "times_ms": list, "first_call_ms": float,
              "flop_per_s": float, "byte_per_s": float, "rotation": dict}
_TOP_KEYS = {"schema": str, "created": str, "host": dict, "versions": dict, "settings": dict, "ceilings": dict,
             "skipped": list, "cases": list, "train_step": list}


def validate(doc: dict) -> dict:
    """Check a results document against the schema; every timed figure's device against its clock."""
    def need(obj, keys, where):
        for k, typ in keys.items():
            if k not in obj:
                raise ValueError(f"{where}: missing key {k!r}")
            ok = isinstance(obj[k], (int, float)) and not isinstance(obj[k], bool) if typ is float else \
                isinstance(obj[k], typ) and not (typ is int and isinstance(obj[k], bool))
            if not ok:
                raise ValueError(f"{where}: {k!r} should be {typ.__name__}, got {type(obj[k]).__name__}")
    need(doc, _TOP_KEYS, "results")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results: schema {doc['schema']!r}, expected {SCHEMA!r}")
    for dev, c in doc["ceilings"].items():
        check_clock(dev, c["clock"])
    for i, row in enumerate(doc["cases"]):
        need(row, _CASE_KEYS, f"cases[{i}]")
        check_clock(row["device"], row["clock"])
        if row.get("reference"):
            check_clock(row["reference"]["device"], row["reference"]["clock"])
        if row["median_ms"] <= 0 or row["repeats"] != len(row["times_ms"]):
            raise ValueError(f"cases[{i}]: a median must be positive and repeats must match times_ms")
    for i, row in enumerate(doc["train_step"]):
        if "not_measured" not in row:
            need(row, {"model": str, "batch": int, "label": str, "device": str, "clock": str, "median_ms": float,
                       "images_per_s": float}, f"train_step[{i}]")
            check_clock(row["device"], row["clock"])
    return doc


def _device_title(device: str, clock: str) -> str:
    check_clock(device, clock)
    return "GPU (CUDA events)" if device == "gpu" else "CPU (monotonic clock)"


def _fmt(v, scale=1.0, digits=1, unit=""):
    return "—" if v is None else f"{v / scale:.{digits}f}{unit}"


def table_rows(doc: dict) -> list[list[str]]:
    head = ["op", "input", "backend", "device", "ms", "GFLOP/s", "% FP32 peak", "GB/s", "% copy BW", "reference",
            "ref ms", "× ref"]
    out = [head]
    for r in doc["cases"]:
        ref = r.get("reference") or {}
        out.append([r["op"], r["shape"], r["label"], _device_title(r["device"], r["clock"]).split()[0],
                    _fmt(r["median_ms"], digits=3), _fmt(r["flop_per_s"] or None, 1e9),
                    _fmt(r["pct_peak_flops"]), _fmt(r["byte_per_s"], 1e9), _fmt(r["pct_peak_bandwidth"]),
                    ref.get("label", "—"), _fmt(ref.get("median_ms"), digits=3),
                    _fmt(r.get("vs_reference"), digits=2, unit="×")])
    return out


def step_rows(doc: dict) -> list[list[str]]:
    out = [["model", "batch", "implementation", "device", "ms / step", "images / s"]]
    for r in doc["train_step"]:
        if "not_measured" in r:
            out.append([r["model"], str(r["batch"]), r["label"], r["device"].upper(), "not measured", r["not_measured"]])
        else:
            out.append([r["model"], str(r["batch"]), r["label"], _device_title(r["device"], r["clock"]).split()[0],
                        _fmt(r["median_ms"]), _fmt(r["images_per_s"], digits=0)])
    return out


def _header_lines(doc: dict) -> list[str]:
    lines = [f"gpucnn bench, {doc['created']}: {doc['host']['cpu']}, {doc['host']['cores']} cores"]
    if doc.get("gpu"):
        lines.append(f"GPU: {doc['gpu'].get('name')}, driver {doc['gpu'].get('driver')}")
    else:
        lines.append("GPU: none used in this run; every figure below is a CPU figure (GPU: not measured)")
    for dev, c in doc["ceilings"].items():
        tf = _fmt(c.get("tf32_flop_per_s"), 1e12, 1, " TFLOP/s") if c.get("tf32_flop_per_s") else "not applicable"
        lines.append(f"{_device_title(dev, c['clock'])} ceilings: copy {c['copy_byte_per_s'] / 1e9:.1f} GB/s, "
                     f"FP32 matmul {c['fp32_flop_per_s'] / 1e9:.1f} GFLOP/s, TF32 {tf} ({c['how']})")
    for s in doc["skipped"]:
        lines.append(f"skipped {s['backend']}: {s['reason']}")
    v = doc["versions"]
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    return lines


def _text_table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_table(doc: dict) -> str:
    """The terminal report: header, one line per case and backend, then the training steps."""
    validate(doc)
    parts = ["\n".join(_header_lines(doc))]
    if doc["cases"]:
        parts.append(_text_table(table_rows(doc)))
    if doc["train_step"]:
        parts.append("whole training step (forward, loss, backward, SGD momentum):\n" + _text_table(step_rows(doc)))
    return "\n\n".join(parts)


def _md_table(rows) -> str:
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] +
                     ["| " + " | ".join(r) + " |" for r in rows[1:]])


def to_markdown(doc: dict) -> str:
    validate(doc)
    out = ["# gpucnn bench: " + results_name(doc), "", *[f"- {line}" for line in _header_lines(doc)], "",
           f"Command: `{doc['command']}`", "",
           "Columns: median time of the repeats; GFLOP/s and GB/s from the case's minimum FLOP count and "
           "compulsory bytes; the percentages are of the ceilings above, measured in the same run; the "
           "reference is PyTorch on the same device (cuDNN for convolutions on a GPU); × ref is our time over "
           "the reference's (above 1: slower).", ""]
    if doc["cases"]:
        out += ["## Ops", "", _md_table(table_rows(doc)), ""]
    if doc["train_step"]:
        out += ["## Whole training step", "", _md_table(step_rows(doc)), ""]
    return "\n".join(out)


def results_name(doc: dict) -> str:
    """'<date>_<device>': e.g. 2026-11-23_cpu-amd-epyc-2-cores, or 2026-11-23_gpu-nvidia-h100-80gb-hbm3."""
    date = doc["created"][:10]
    if doc.get("gpu"):
        dev = "gpu-" + str(doc["gpu"].get("name", "unknown"))
    else:
        dev = f"cpu-{doc['host']['cpu']}-{doc['host']['cores']}-cores"
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    return f"{date}_{slug}"


def write_results(doc: dict, out_dir, plot=True) -> list[Path]:
    """Write <name>.json, <name>.md and (matplotlib permitting) <name>_roofline.png into out_dir."""
    validate(doc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / results_name(doc)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    paths[1].write_text(to_markdown(doc))
    if plot and doc["cases"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return paths
        import matplotlib.pyplot as plt
        fig = plot_roofline(doc)
        png = out_dir / f"{stem.name}_roofline.png"
        fig.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(png)
    return paths


# --------------------------------------------------------------------------- plots (matplotlib, imported here only)

def plot_roofline(doc: dict, ax=None):
    """Achieved FLOP/s against arithmetic intensity, under each device's measured roofs."""
    import matplotlib.pyplot as plt
    validate(doc)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in doc["cases"] if r["flops"]]
    if not rows:
        raise ValueError("no case with a FLOP count to plot")
    ai = [r["intensity"] for r in rows]
    xs = np.logspace(np.log10(min(ai) / 2), np.log10(max(ai) * 4), 200)
    for dev, c in doc["ceilings"].items():
        title = _device_title(dev, c["clock"]).split()[0]
        bw = c["copy_byte_per_s"]
        ax.plot(xs, np.minimum(c["fp32_flop_per_s"], xs * bw), "k-" if dev == "cpu" else "b-", lw=1.5,
                label=f"{title} roof: {bw / 1e9:.0f} GB/s, FP32 {c['fp32_flop_per_s'] / 1e9:.0f} GFLOP/s")
        if c.get("tf32_flop_per_s"):
            ax.plot(xs, np.minimum(c["tf32_flop_per_s"], xs * bw), "b--", lw=1,
                    label=f"{title} TF32 roof {c['tf32_flop_per_s'] / 1e12:.0f} TFLOP/s")
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    seen = set()
    for r in rows:
        for src, filled in ((r, True), (r.get("reference"), False)):
            if not src:
                continue
            lab = f"{r['op']} ({'gpucnn ' + r['impl'] if filled else src['label']})"
            ax.scatter(r["intensity"], src["flop_per_s"], s=28, color=colors[r["op"]] if filled else "none",
                       edgecolors=colors[r["op"]], marker="o" if filled else "s",
                       label=None if lab in seen else lab)
            seen.add(lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of compulsory traffic)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"roofline, {results_name(doc)} (filled: gpucnn, hollow: reference)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return fig or ax.figure


def plot_sweep(doc: dict, ax=None):
    """Median time against input size for the sweep cases, one line per op and implementation."""
    import matplotlib.pyplot as plt
    validate(doc)
    rows = [r for r in doc["cases"] if r["source"] == "sweep"]
    if not rows:
        raise ValueError("no sweep cases in these results (run with sweep=True / --sweep)")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    lines = {}
    for r in rows:
        lines.setdefault((r["op"], r["label"]), []).append((r["h"], r["median_ms"]))
        if r.get("reference"):
            lines.setdefault((r["op"], r["reference"]["label"]), []).append((r["h"], r["reference"]["median_ms"]))
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    for (op, label), pts in lines.items():
        pts = sorted(set(pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if label.startswith("gpucnn") else "s--",
                color=colors[op], label=f"{op}, {label}", ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"H = W (batch {rows[0]['n']}, {rows[0]['c']} channels)")
    ax.set_ylabel("median time (ms)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig or ax.figure
