"""Shared pytest setup.

Without a GPU, Numba's CUDA simulator runs the numba backend's kernels on the
CPU: NUMBA_ENABLE_CUDASIM=1 is set here, before anything imports numba. The
CuPy backend's CUDA C runs on the CPU too: GPUCNN_CUPY_EMULATE=1 makes it
compile kernels/*.cu with g++ against kernels/hostemu.h. Tests
marked `gpu` need a real GPU and are skipped, saying why, without one.
"""
import importlib
import os
import sys

import pytest


def _gpu_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


if not _gpu_present():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.environ.setdefault("GPUCNN_CUPY_EMULATE", "1")  # CuPy backend: kernels/*.cu compiled for the CPU
    if "numba.core.config" in sys.modules:  # numba read its settings already: switch them too
        sys.modules["numba.core.config"].ENABLE_CUDASIM = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"
    if "numba.cuda" in sys.modules and "numba.cuda.simulator" not in sys.modules:
        raise RuntimeError("numba.cuda was imported before tests/conftest.py could enable the CUDA simulator")


def pytest_collection_modifyitems(config, items):
    if _gpu_present() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return
    why = "no CUDA GPU on this machine" if not _gpu_present() else "NUMBA_ENABLE_CUDASIM=1 (simulator run)"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"gpu test skipped: {why}"))


@pytest.fixture(autouse=True)
def numpy_backend():
    """Every test starts on the NumPy backend, and a global use_backend() a test makes ends with it."""
    from gpucnn import backend
    with backend.use_backend("numpy"):
        yield


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every output of the numba and cupy backends starts as NaN, in every test: an element a kernel
    forgets to write fails assert_close (which refuses non-finite results), or poisons a model test."""
    for name in ("gpucnn.backends.numba._common", "gpucnn.backends.cupy._runtime"):
        try:
            monkeypatch.setattr(importlib.import_module(name), "POISON", True)
        except ImportError:  # that backend cannot load here: its tests are skipped anyway
            pass
