"""The op tests (tests/ops/test_<family>.py, one per family of kernels/*.cu and gpucnn/backends/*/<family>.py).

Every case is declared once per family and run, through helpers.grid/on, on each backend that can
afford it: NumPy against the loop oracle (tests/oracle.py), Numba in the CUDA simulator and CuPy in
the emulator (or both on a GPU) against NumPy.
"""
import pytest


@pytest.fixture
def cupy_launches(monkeypatch):
    """The names of the cupy backend's kernel launches (kernel<template args>), in order."""
    from gpucnn.backends.cupy import _runtime
    launched = []
    real = _runtime.Family.launch
    monkeypatch.setattr(_runtime.Family, "launch",
                        lambda self, name, *a: (launched.append(name), real(self, name, *a))[1])
    return launched
