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


def pytest_sessionstart(session):
    """Start the nvcc builds of kernels/*.cu that the static-model and compile tests read (gpucnn.perf.sass.build:
    sm_90 then sm_80, the biggest files first), then the emulator's instrumented builds (hostemu.build), on a
    background thread, one compiler at a time: they take minutes
    of one core, and the tests that come first (the op tests in the simulator and the emulator) leave the
    second core of a CI machine mostly idle. A test that needs a build waits for it (sass.build locks per
    build) or finds it cached. GPUCNN_TEST_PREBUILD=0 turns it off."""
    if os.environ.get("GPUCNN_TEST_PREBUILD", "1") != "1":
        return
    try:
        from gpucnn.backends.cupy import _runtime as rt
        from gpucnn.perf import model, sass
    except Exception:  # a broken install fails in the tests themselves, with their message
        return
    if sass.missing():
        return

    def prebuild():
        families = sorted((p.stem for p in rt.kernels_dir().glob("*.cu")), key=lambda f: (f not in ("conv", "dense"), f))
        for arch in ("sm_90", "sm_80"):
            for family in families:
                try:
                    sass.build(rt.module_source(family), rt.kernels_dir(), model.family_names(family), arch)
                except Exception:  # the test that builds it reports the error
                    pass
        from gpucnn.backends.cupy import hostemu
        for family in families:  # the emulator's instrumented builds (wavefront counter, allocation check)
            try:
                hostemu.build(rt.kernels_dir() / f"{family}.cu", model.family_names(family), instrumented=True)
            except Exception:
                pass

    import threading
    threading.Thread(target=prebuild, name="gpucnn-prebuild", daemon=True).start()


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
