"""The CuPy backend: every op as CUDA C kernels from kernels/, launched through cupy.RawModule.

One launcher module per kernels/*.cu family (conv, dense, elementwise, pool, softmax, norm, optim);
each registers host launchers with the same signatures as the NumPy backend's functions (the
arguments `gpucnn.functional` has already checked and resolved), checks dtype, contiguity and sizes
itself (`_runtime.check`), and returns CuPy arrays. `_runtime` holds what they share (modules,
checks, geometry, the step arena and the captured graph), `transfer` the pinned batch feeder.

With GPUCNN_CUPY_EMULATE=1 the same launchers and kernels run on the CPU: kernels compiled by g++
through hostemu, arrays from `emucupy` (the part of CuPy the backend uses, emulated so that it
refuses what a GPU would refuse). The backend is then `simulated` and 'auto' skips it. Nothing here
imports CuPy until the backend is probed or used.
"""
from __future__ import annotations

import os

from .._base import Backend


class CudaEvents:
    """GPU time of a call between two CUDA events recorded on the current CuPy stream."""

    device, clock = "gpu", "cuda-events"

    def sync(self):  # pragma: no cover - needs a GPU
        import cupy
        cupy.cuda.get_current_stream().synchronize()

    def time_ms(self, fn) -> float:  # pragma: no cover - needs a GPU
        import cupy
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(cupy.cuda.get_elapsed_time(start, end))


class Capture:
    """The capture primitive: what a captured training step needs from the backend, and nothing else.

    arena(): a step workspace (every output of a launcher inside ``workspace(arena)`` comes from it, the
    same addresses every step); graph(fn, stream): fn captured as a CUDA graph, ``.launch()`` replays it;
    stream(): a non-blocking stream (a context manager); empty/zeros: device arrays that outlive a step;
    copy_into(dst, src): a batch (host: uploaded; device: copied) into a fixed input buffer.
    """

    def __getattr__(self, name):
        from . import _runtime as rt
        table = {"arena": rt.Arena, "workspace": rt.workspace, "graph": rt.Graph, "stream": rt.new_stream,
                 "empty": rt.persistent_empty, "zeros": rt.zeros, "copy_into": rt.copy_into}
        if name not in table:
            raise AttributeError(name)
        return table[name]


class CupyBackend(Backend):
    name = "cupy"
    priority = 0
    device = "gpu"
    families = ("conv", "pool", "elementwise", "dense", "softmax", "norm", "optim")
    capture = Capture()
    tf32_ops = ("conv2d", "conv2d_backward")  # kernels/conv.cu's TF32 template argument
    max_elements = 2**31 - 1  # every kernel indexes with 32-bit integers (_runtime.INT32_MAX)
    simulator = "CPU emulation of its CUDA C (GPUCNN_CUPY_EMULATE=1)"

    @property
    def simulated(self) -> bool:
        return os.environ.get("GPUCNN_CUPY_EMULATE") == "1"

    def probe(self) -> str | None:
        if self.simulated:
            from . import hostemu
            if hostemu.compiler() is None:
                return "GPUCNN_CUPY_EMULATE=1 needs g++ to build the kernels for the CPU, and none was found"
            return None
        try:
            import cupy
        except Exception as e:
            return (f"cupy is not installed or cannot load ({type(e).__name__}: {e}); pip install 'gpucnn[cuda12]' "
                    "or 'gpucnn[cuda13]' (gpucnn info says which fits the driver)")
        try:  # pragma: no cover - depends on the machine
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy sees no CUDA device"
        except Exception as e:
            return f"cupy cannot reach a CUDA device: {e}"
        return None  # pragma: no cover - needs a GPU

    @property
    def batch_feeder(self):
        from .transfer import BatchFeeder
        return BatchFeeder

    def asarray(self, a):
        from . import _runtime
        return _runtime.device(a)

    def to_host(self, a):
        from . import _runtime
        return _runtime.xp.asnumpy(a)  # a device-to-host copy (emulated too: emucupy's arrays refuse np.asarray)

    def empty(self, shape, dtype):
        from . import _runtime
        return _runtime.empty(shape, dtype)

    def zeros(self, shape, dtype):
        from . import _runtime
        return _runtime.zeros(shape, dtype)

    def synchronize(self) -> None:
        from . import _runtime
        _runtime.synchronize()

    def timer(self):
        self.refuse_simulated()
        return CudaEvents()  # pragma: no cover - needs a GPU

    def device_facts(self) -> dict:  # pragma: no cover - needs a GPU
        if self.simulated:
            return {"name": "CuPy emulator (kernels/*.cu on the CPU)", "sms": 4}
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        return {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                "compute_capability": dev.compute_capability, "memory_bytes": int(props["totalGlobalMem"]),
                "l2_bytes": int(props["l2CacheSize"]), "sms": int(props["multiProcessorCount"]),
                "driver": cupy.cuda.runtime.driverGetVersion(), "runtime": cupy.cuda.runtime.runtimeGetVersion()}


BACKEND = CupyBackend()
