"""Global settings, in the spirit of ``torch.backends.cuda.matmul.allow_tf32``.

``allow_tf32`` (default False, or the environment variable GPUCNN_ALLOW_TF32=1):
when True, the CuPy backend's convolutions and linear layers run on TF32 tensor
cores (10-bit mantissa inputs, FP32 accumulation; about 1e-3 relative error).
When False every product is exact FP32. The NumPy and Numba backends always
compute in the input's precision and ignore it.

    gpucnn.config.allow_tf32 = True          # global
    with gpucnn.config.tf32(True): ...       # scoped
"""
from __future__ import annotations

import os

allow_tf32: bool = os.environ.get("GPUCNN_ALLOW_TF32", "0") == "1"


class tf32:
    """Context manager: set ``allow_tf32`` inside the block, restore it after."""

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)

    def __enter__(self):
        global allow_tf32
        self._previous = allow_tf32
        allow_tf32 = self.enabled
        return self

    def __exit__(self, *exc):
        global allow_tf32
        allow_tf32 = self._previous
        return False
