"""The op tests (tests/ops/test_<family>.py, one per family of kernels/*.cu and gpucnn/backends/*/<family>.py).

Every case is declared once per family and run, through helpers.grid/on, on each backend that can
afford it: NumPy against the loop oracle (tests/oracle.py), Numba in the CUDA simulator and CuPy in
the emulator (or both on a GPU) against NumPy.
"""
import importlib

import pytest


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every output of the numba and cupy backends starts as NaN: an element a kernel forgets to write
    fails assert_close (which refuses non-finite results)."""
    for name in ("gpucnn.backends.numba._common", "gpucnn.backends.cupy._runtime"):
        try:
            monkeypatch.setattr(importlib.import_module(name), "POISON", True)
        except ImportError:  # that backend cannot load here: its tests are skipped anyway
            pass


@pytest.fixture
def cupy_launches(monkeypatch):
    """The names of the cupy backend's kernel launches (kernel<template args>), in order."""
    from gpucnn.backends.cupy import _runtime
    launched = []
    real = _runtime.Family.launch
    monkeypatch.setattr(_runtime.Family, "launch",
                        lambda self, name, *a: (launched.append(name), real(self, name, *a))[1])
    return launched
