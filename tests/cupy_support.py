"""Shared by the CuPy-backend tests: skip when the backend cannot run, poison outputs, compare to NumPy.

Without a GPU the backend runs emulated (tests/conftest.py sets GPUCNN_CUPY_EMULATE=1): the very same
kernels/*.cu compiled for the CPU by g++ through kernels/hostemu.h, with emucupy's device arrays
(NumPy memory that refuses implicit host conversion, as cupy.ndarray does).
On a GPU machine the same tests run the kernels on the GPU through CuPy.
"""
import numpy as np
import pytest

from gpucnn import backend
from gpucnn import functional as F

if "cupy" not in backend.available_backends():
    pytest.skip(f"cupy backend unavailable: {backend.info()['cupy']['reason']}", allow_module_level=True)

from gpucnn.backends.cupy import _runtime  # noqa: E402  (after the availability check)

EMULATED = _runtime.EMULATED


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every output of a cupy launcher starts as NaN: an element a kernel forgets to write fails."""
    monkeypatch.setattr(_runtime, "POISON", True)


def host(a):
    """A cupy-backend result on the host; it must be the backend's own device array type (emucupy's when
    emulated: a NumPy array coming out of the backend would be a host array the GPU never had)."""
    if EMULATED:
        assert isinstance(a, _runtime.xp.ndarray), f"expected an (emulated) device array, got {type(a)}"
        return a.get()
    import cupy  # pragma: no cover - GPU only
    assert isinstance(a, cupy.ndarray), f"expected a CuPy array, got {type(a)}"
    return cupy.asnumpy(a)


def device(a):
    """A host array uploaded to the cupy backend's device (a copy)."""
    return _runtime.xp.asarray(a)


def run(op, *args, **kwargs):
    """`F.<op>(*args)` on the cupy backend."""
    with backend.use_backend("cupy"):
        return getattr(F, op)(*args, **kwargs)


def ref(op, *args, **kwargs):
    """`F.<op>(*args)` on the NumPy backend (the reference)."""
    with backend.use_backend("numpy"):
        return getattr(F, op)(*args, **kwargs)
