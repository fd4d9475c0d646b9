"""The CuPy backend: every op as CUDA C kernels from kernels/, launched through cupy.RawModule.

One launcher module per kernels/*.cu family in `gpucnn/backends/cupy/`; each
registers host launchers with the same signatures as the NumPy backend's
functions (the arguments `gpucnn.functional` has already checked and
resolved), checks dtype, contiguity and sizes itself (`_runtime.check`), and
returns CuPy arrays. With GPUCNN_CUPY_EMULATE=1 the same launchers and kernels
run on the CPU (NumPy arrays, kernels compiled by g++ through hostemu): the
backend is then 'simulated' and 'auto' skips it.
"""
from __future__ import annotations

import numpy as np

from ..backend import register
from .cupy import _runtime
from .cupy import conv, dense, elementwise, norm, optim, pool, softmax, transfer  # noqa: F401  (each registers its ops)

B = "cupy"


@register("asarray", B)
def asarray(a):
    return _runtime.device(a)


@register("to_numpy", B)
def to_numpy(a):
    return _runtime.xp.asnumpy(a)  # a device-to-host copy (emulated too: emucupy's arrays refuse np.asarray)


@register("zeros_like", B)
def zeros_like(a):
    return _runtime.zeros(a.shape, a.dtype)
