"""The device's ceilings, measured in the same run (a large copy, a large FP32 matrix product and on a
GPU a TF32 one), its largest cache, and the environment: host, GPU (from ``Backend.device_facts()``),
driver and package versions.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from ..backend import CpuTimer, auto_order, get_backend
from .timers import CPU_CLOCK, GPU_CLOCK, median


def gpu_backend(names=None):
    """The GPU backend whose device a run describes and measures: of `names` (default: every backend that
    runs here), the fastest real (not simulated) one with device 'gpu'; None when there is none."""
    from ..backend import available_backends
    names = available_backends() if names is None else names
    for name in auto_order():
        b = get_backend(name)
        if name in names and b.device == "gpu" and not b.simulated:
            return b
    return None


def cache_bytes(device: str, facts: dict | None = None) -> int:
    """The largest cache of the device: CPU last-level cache (sysfs), GPU L2 (the GPU backend's device_facts())."""
    if device == "gpu":
        facts = gpu_backend().device_facts() if facts is None else facts
        return int(facts["l2_bytes"])
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


def gpu_ceilings(copy_mb=1024, matmul_n=8192, repeats=10, backend=None) -> dict:  # pragma: no cover - needs a GPU
    """A large device-to-device copy and FP32 / TF32 matrix products, with CUDA events (CuPy, timed with
    the GPU backend's timer, else PyTorch with its own)."""
    try:
        import cupy
        from cupy._core import _routines_linalg as lin
        timer = (backend or gpu_backend()).timer()
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
        from .torch_twins import TorchCudaEvents
        timer = TorchCudaEvents()
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


def environment(gpu=None) -> dict:
    """Host, GPU (`gpu`: the GPU backend used, if any; True: the one gpu_backend() finds), driver and package
    versions."""
    from .. import __version__
    from .._blas import describe
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
        env["gpu"] = gpu_info(gpu_backend() if gpu is True else gpu)
        env["versions"]["driver"] = env["gpu"].get("driver")
    return env


def gpu_info(backend=None) -> dict:  # pragma: no cover - needs a GPU
    """The GPU backend's device_facts(), with the driver version nvidia-smi reports."""
    out = dict((backend or gpu_backend()).device_facts())
    try:
        import subprocess
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip() or out.get("driver")
    except (OSError, subprocess.SubprocessError):
        pass
    return out
