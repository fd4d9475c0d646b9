"""Shared pytest setup.

Without a GPU, Numba's CUDA simulator runs the numba backend's kernels on the
CPU: NUMBA_ENABLE_CUDASIM=1 is set here, before anything imports numba. Tests
marked `gpu` need a real GPU and are skipped, saying why, without one.
"""
import os

import pytest


def _gpu_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


if not _gpu_present():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_collection_modifyitems(config, items):
    if _gpu_present() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return
    why = "no CUDA GPU on this machine" if not _gpu_present() else "NUMBA_ENABLE_CUDASIM=1 (simulator run)"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"gpu test skipped: {why}"))
