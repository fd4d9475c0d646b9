"""The CuPy backend's launchers, one module per kernels/*.cu family (see gpucnn/backends/cupy_backend.py)."""
