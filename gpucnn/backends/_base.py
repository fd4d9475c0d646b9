"""What a backend is, and how its families declare their ops: imported by every backend package, and by
gpucnn.backend (the registry), never the other way round.

A backend package (``gpucnn/backends/<name>/``) defines ``BACKEND``, an instance of a `Backend`
subclass, in its ``__init__``; its family modules mark each host function with ``@register(op,
name)``. gpucnn.backend finds the packages, and collects the marked functions of a backend's families
when the backend is first used.
"""
from __future__ import annotations

import time


def register(op: str, backend: str):
    """Decorator: mark ``fn`` as the implementation of ``op`` on ``backend`` (collected by gpucnn.backend
    when the backend loads its families)."""

    def deco(fn):
        marks = getattr(fn, "__gpucnn_ops__", [])
        fn.__gpucnn_ops__ = marks + [(op, backend)]
        return fn

    return deco


class CpuTimer:
    """Wall time of a call on the monotonic clock (a CPU backend's work is done when the call returns)."""

    device, clock = "cpu", "cpu-monotonic"

    def sync(self):
        pass

    def time_ms(self, fn) -> float:
        t = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t) / 1e6


class Backend:
    """The interface every backend object provides (defaults: a host backend)."""

    name = ""
    priority = 100     # 'auto' tries backends in increasing priority (fastest first); listings go the other way
    device = "cpu"     # where its arrays live and its kernels run: 'cpu' or 'gpu'
    families: tuple[str, ...] = ()  # op-family modules of its package (gpucnn.backend imports them on first use)
    capture = None     # the capture primitive (see backends/cupy), where the backend has one
    batch_feeder = None  # (x, y, batch_size) -> a feeder with .epoch(order), where the backend has one
    tf32_ops: tuple[str, ...] = ()  # ops whose math follows gpucnn.config.allow_tf32 (TF32 tensor cores)
    simulator = "a simulator"  # what runs its kernels on the CPU when `simulated`, in words
    max_elements: int | None = None  # the most elements one array may have (kernels that index with 32-bit
    # integers set 2**31 - 1; None: only memory limits it); gpucnn.functional checks outputs against it

    # -- can it run here
    def probe(self) -> str | None:
        return None

    @property
    def simulated(self) -> bool:
        return False


    # -- arrays
    def asarray(self, a):
        raise NotImplementedError

    def to_host(self, a):
        raise NotImplementedError

    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    # -- time and the device
    def synchronize(self) -> None:
        pass

    def timer(self):
        """A timer whose time_ms(fn) is the time of fn's work on this backend's device."""
        self.refuse_simulated()
        return CpuTimer()

    def refuse_simulated(self) -> None:
        if self.simulated:
            raise ValueError(f"backend {self.name!r} runs in a simulator (CPU emulation of its kernels): never timed")

    def device_facts(self) -> dict:
        """What the device is: name, SMs, memory, cache, driver... (a GPU backend asks its library)."""
        return {}

    def __repr__(self):
        return f"<gpucnn backend {self.name!r}>"
