"""Shared by the CuPy-backend tests outside tests/ops: skip when the backend cannot run, host/run/device/ref.

Without a GPU the backend runs emulated (tests/conftest.py sets GPUCNN_CUPY_EMULATE=1): the very same
kernels/*.cu compiled for the CPU by g++ through kernels/hostemu.h, with emucupy's device arrays
(NumPy memory that refuses implicit host conversion, as cupy.ndarray does).
On a GPU machine the same tests run the kernels on the GPU through CuPy.
"""
import pytest

from gpucnn import backend
from helpers import On, ref  # noqa: F401  (ref: re-exported)

if "cupy" not in backend.available_backends():
    pytest.skip(f"cupy backend unavailable: {backend.info()['cupy']['reason']}", allow_module_level=True)

from gpucnn.backends.cupy import _runtime  # noqa: E402  (after the availability check)

EMULATED = _runtime.EMULATED


CUPY = On("cupy")
host = CUPY.host      # a cupy-backend result on the host (asserting it is the backend's own device array)
run = CUPY.run        # `F.<op>(*args)` on the cupy backend


def device(a):
    """A host array uploaded to the cupy backend's device (a copy)."""
    return _runtime.xp.asarray(a)
