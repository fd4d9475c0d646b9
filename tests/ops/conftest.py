"""The op tests (tests/ops/test_<family>.py, one per family of kernels/*.cu and gpucnn/backends/*/<family>.py).

Every case is declared once per family and run, through helpers.grid/on, on each backend that can
afford it: NumPy against the loop oracle (tests/oracle.py), Numba in the CUDA simulator and CuPy in
the emulator (or both on a GPU) against NumPy.
"""
import pytest


@pytest.fixture
def cupy_launches(monkeypatch):
    """The names of the cupy backend's kernel launches (kernel<template args>), in order."""
    from gpucnn.backends.cupy import _runtime
    launched = []
    real = _runtime.Family.launch
    monkeypatch.setattr(_runtime.Family, "launch",
                        lambda self, name, *a: (launched.append(name), real(self, name, *a))[1])
    return launched


class _LaunchSpy:
    """Stands in for a numba kernel: records (factory, closure, grid, block) of every launch, then launches."""

    def __init__(self, kernel, factory, log):
        self.kernel, self.factory, self.log = kernel, factory, log

    def __getitem__(self, config):
        import numpy as np
        grid, block = (tuple(np.atleast_1d(c).tolist() + [1] * (3 - np.size(c))) for c in config[:2])  # 3-D
        fn = self.kernel.py_func  # the compile-time values the kernel factory froze into it, by name
        closure = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
        self.log.append((self.factory, closure, grid, block))
        return self.kernel[config]


@pytest.fixture
def numba_launches(monkeypatch):
    """The numba backend's launches of kernels made by `_common.specialize`, in order: (factory name,
    closure values by name, grid, block), grid and block as 3-tuples.

    The simulator runs the dense kernels with _common.SIM_TILE (8) and batch norm with 64-thread blocks, a GPU
    with _common.GPU_TILE (16) and _common.GPU_REDUCE_THREADS (256): a test patches those to run the GPU
    geometry in the simulator, and checks from this log that it was the one used."""
    from gpucnn.backends.numba import _common
    log = []
    real = _common.specialize
    monkeypatch.setattr(_common, "specialize",
                        lambda cache, factory, dtype, *params: _LaunchSpy(real(cache, factory, dtype, *params),
                                                                          factory.__name__, log))
    return log
