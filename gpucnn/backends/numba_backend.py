"""The Numba CUDA backend: every op as @cuda.jit kernels, one module per op family.

Kernels live in `gpucnn/backends/numba/`; each module registers its host
launchers with the same signatures as the NumPy backend's functions (the
arguments `gpucnn.functional` has already checked and resolved). An op whose
kernel is not written yet is simply not registered, and asking for it raises
BackendError naming the op and 'numba'. Arrays stay on the device.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..backend import register
from .numba import _common

B = "numba"

# Op families with kernels; each module registers its ops when imported.
FAMILIES = ("elementwise", "pool", "conv", "dense", "norm", "optim")
for _family in FAMILIES:
    try:
        importlib.import_module(f"gpucnn.backends.numba.{_family}")
    except ModuleNotFoundError as e:  # a family not written yet: its ops stay unregistered
        if e.name != f"gpucnn.backends.numba.{_family}":
            raise


@register("asarray", B)
def asarray(a):
    return _common.device(a)


@register("to_numpy", B)
def to_numpy(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


@register("zeros_like", B)
def zeros_like(a):
    return _common.zeros(a.shape, a.dtype)
