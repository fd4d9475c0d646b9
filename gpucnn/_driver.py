"""Which CUDA driver is here, and so which CuPy wheel fits it (shown by `gpucnn info`).

The driver's CUDA version comes from the driver library itself
(``cuDriverGetVersion`` in libcuda, through ctypes): no CuPy, no toolkit and
no GPU context needed. It is 1000 * major + 10 * minor (12040 is CUDA 12.4).
"""
from __future__ import annotations

import ctypes
import sys

# CuPy's binary wheels, one per CUDA major version, and the gpucnn extra that pulls each
WHEELS = {12: ("cupy-cuda12x", "gpucnn[cuda12]"), 13: ("cupy-cuda13x", "gpucnn[cuda13]"),
          11: ("cupy-cuda11x", None)}


def cuda_driver_version() -> int | None:
    """The CUDA version the installed driver supports (e.g. 12040), or None when there is no driver library."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:  # CUDA_SUCCESS is 0
            return None
    except (OSError, AttributeError):
        return None
    return version.value or None


def cupy_wheel(version: int | None) -> str | None:
    """The CuPy wheel for a driver version from cuda_driver_version(): 12xxx -> cupy-cuda12x, 13xxx -> cupy-cuda13x."""
    if version is None:
        return None
    entry = WHEELS.get(version // 1000)
    return entry[0] if entry else None


def describe(version: int | None = None) -> str:
    """One line: the driver's CUDA version and the CuPy wheel (and gpucnn extra) to install for it."""
    if version is None:
        version = cuda_driver_version()
    if version is None:
        return "no CUDA driver here (libcuda.so.1 cannot be loaded): no GPU backend can run"
    cuda = f"{version // 1000}.{version % 1000 // 10}"
    entry = WHEELS.get(version // 1000)
    if entry is None:
        return f"driver for CUDA {cuda}: no CuPy wheel is known for it (CuPy ships cupy-cuda12x and cupy-cuda13x)"
    wheel, extra = entry
    how = f"pip install '{extra}'" if extra else f"pip install {wheel}"
    line = f"driver for CUDA {cuda}: the CuPy wheel that fits is {wheel} ({how})"
    others = [w for w in installed_wheels() if w != wheel]
    if others:
        line += f"; installed here: {', '.join(others)}, which does not fit"
    return line


def installed_wheels() -> list[str]:
    """The CuPy wheels (cupy-cudaNNx) pip installed here."""
    from importlib import metadata
    found = []
    for wheel, _ in WHEELS.values():
        try:
            metadata.version(wheel)
        except metadata.PackageNotFoundError:
            continue
        found.append(wheel)
    return found
