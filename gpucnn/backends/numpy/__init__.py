"""The NumPy backend: the reference every kernel is checked against, and the CPU fallback.

Host NumPy arrays in and out; its op families register themselves when the backend loads.
"""
from __future__ import annotations

import numpy as np

from .._base import Backend


def to_host(a) -> np.ndarray:
    """Any backend's array as a host NumPy array (CuPy's .get(), Numba's .copy_to_host(), or as is)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # CuPy (and the emulated CuPy's arrays)
        return a.get()
    if hasattr(a, "copy_to_host"):  # a Numba device array
        return a.copy_to_host()
    return np.asarray(a)


class NumpyBackend(Backend):
    name = "numpy"
    priority = 2
    device = "cpu"
    families = ("conv", "pool", "elementwise", "dense", "softmax", "norm", "optim")

    def asarray(self, a):
        return np.asarray(to_host(a), order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)

    def to_host(self, a):
        return to_host(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)


BACKEND = NumpyBackend()
