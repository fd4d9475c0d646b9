"""Shared pytest setup: tests marked `gpu` run only where a CUDA GPU is present, and say why they skip."""
import pytest


def _gpu_reason():
    try:
        from numba import cuda
        if cuda.is_available():
            return None
    except Exception as e:  # pragma: no cover - depends on the install
        return f"numba.cuda cannot be imported: {e}"
    return "no CUDA GPU on this machine (numba.cuda.is_available() is False)"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test skipped: {reason}"))
