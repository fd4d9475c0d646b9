"""The Numba CUDA backend: every op as @cuda.jit kernels, one module per op family.

Kernels live in `gpucnn/backends/numba/`; each module registers its host
launchers with the same signatures as the NumPy backend's functions (the
arguments `gpucnn.functional` has already checked and resolved). Arrays stay
on the device.
"""
from __future__ import annotations

import numpy as np

from ..backend import register
from .numba import _common
from .numba import conv, dense, elementwise, norm, optim, pool  # noqa: F401  (each registers its ops)

B = "numba"


@register("asarray", B)
def asarray(a):
    return _common.device(a)


@register("to_numpy", B)
def to_numpy(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


@register("zeros_like", B)
def zeros_like(a):
    return _common.zeros(a.shape, a.dtype)
