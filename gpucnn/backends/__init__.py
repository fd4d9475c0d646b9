"""The backends, one package each: ``numpy/`` (the reference, on the host), ``numba/`` (Numba CUDA
kernels), ``cupy/`` (the CUDA C of kernels/ through CuPy). Each package's ``__init__`` defines its
`gpucnn.backend.Backend` object and registers it; gpucnn.backend finds them by walking this package.
"""

HOST = "numpy"  # the backend whose arrays are host NumPy arrays: the reference, and where models start
