"""Which BLAS NumPy uses here: the library, its kernels and threads (shown by `gpucnn info`).

The NumPy backend's speed is mostly its matrix products, so the kernels
OpenBLAS picks matter: on this project's CI-class machine the environment sets
OPENBLAS_CORETYPE=Haswell (AVX2 kernels) although the CPU has AVX-512.
"""
from __future__ import annotations

import os


def _blas_libs() -> list[dict]:
    from threadpoolctl import threadpool_info
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def describe() -> str:
    libs = _blas_libs()
    if not libs:
        return "no BLAS found by threadpoolctl"
    i = libs[0]
    arch = f", {i['architecture']} kernels" if i.get("architecture") else ""
    forced = os.environ.get("OPENBLAS_CORETYPE")
    how = f" (OPENBLAS_CORETYPE={forced} in the environment)" if forced else ""
    return f"{i.get('internal_api')} {i.get('version')}{arch}, {i.get('num_threads')} threads{how}"


def blas_threads() -> int | None:
    """The thread count of the BLAS NumPy uses (as threadpoolctl reports it now), or None if none is found."""
    libs = _blas_libs()
    return libs[0].get("num_threads") if libs else None
