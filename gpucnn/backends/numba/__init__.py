"""Numba CUDA kernels: one module per op family, each kernel beside its launcher."""
