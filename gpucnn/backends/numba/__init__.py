"""The Numba CUDA backend: every op as @cuda.jit kernels, one module per op family, each kernel beside
its launcher. Arrays stay on the device (Numba device arrays; CuPy arrays pass through zero-copy).

Without a GPU the tests run it in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is
imported): the backend is then `simulated` and 'auto' skips it. Nothing here imports numba until the
backend is probed or used.
"""
from __future__ import annotations

import os

import numpy as np

from .._base import Backend


class CudaEvents:
    """GPU time of a call between two CUDA events (Numba's), after the work queued before it."""

    device, clock = "gpu", "cuda-events"

    def sync(self):
        from numba import cuda
        cuda.synchronize()

    def time_ms(self, fn) -> float:  # pragma: no cover - needs a GPU
        from numba import cuda
        start, end = cuda.event(timing=True), cuda.event(timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(cuda.event_elapsed_time(start, end))


class NumbaBackend(Backend):
    name = "numba"
    priority = 1
    device = "gpu"
    families = ("conv", "pool", "elementwise", "dense", "softmax", "norm", "optim")
    simulator = "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"

    @property
    def simulated(self) -> bool:
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

    def probe(self) -> str | None:
        try:
            from numba import cuda
        except Exception as e:  # pragma: no cover - depends on the install
            return f"numba.cuda cannot be imported: {e}"
        if not self.simulated and not cuda.is_available():
            return "numba cannot reach a CUDA GPU (numba.cuda.is_available() is False: no GPU or driver here)"
        return None

    def asarray(self, a):
        from . import _common
        return _common.device(a)

    def to_host(self, a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    def empty(self, shape, dtype):
        from . import _common
        return _common.empty(shape, dtype)

    def zeros(self, shape, dtype):
        from . import _common
        return _common.zeros(shape, dtype)

    def synchronize(self) -> None:
        from numba import cuda
        cuda.synchronize()

    def timer(self):
        self.refuse_simulated()
        return CudaEvents()  # pragma: no cover - needs a GPU

    def device_facts(self) -> dict:  # pragma: no cover - needs a GPU
        if self.simulated:
            return {"name": "Numba CUDA simulator"}
        from numba import cuda
        dev = cuda.get_current_device()
        return {"name": dev.name.decode() if isinstance(dev.name, bytes) else dev.name,
                "compute_capability": ".".join(map(str, dev.compute_capability)),
                "l2_bytes": int(dev.L2_CACHE_SIZE), "sms": int(dev.MULTIPROCESSOR_COUNT),
                "driver": cuda.cudadrv.driver.driver.get_version()}


BACKEND = NumbaBackend()
