"""Backends: which exist here and why not, the (op, backend) registry, use_backend().

One registry maps (op name, backend name) to a function. A backend module
(``gpucnn.backends.<name>``) registers its functions with ``@register(op, name)``
when it is imported; it is imported the first time its backend is chosen, so
``import gpucnn`` never pays for Numba or CuPy. Asking for an op a backend
lacks, or for a backend that does not exist, raises an error naming both:
there is never a silent fallback to another backend.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

BACKENDS = ("numpy", "numba", "cupy")
AUTO_ORDER = ("cupy", "numba", "numpy")  # fastest first

_registry: dict[tuple[str, str], Callable] = {}
_loaded: set[str] = set()
_current = "numpy"


class BackendError(RuntimeError):
    """A backend cannot run here, or lacks an op."""


def register(op: str, backend: str):
    """Decorator: make ``fn`` the implementation of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")

    def deco(fn):
        _registry[(op, backend)] = fn
        return fn

    return deco


def _probe(name: str) -> str | None:
    """None when backend `name` can run on this machine, else the reason it cannot."""
    if name == "numba":
        try:
            from numba import cuda
        except Exception as e:  # pragma: no cover - depends on the install
            return f"numba.cuda cannot be imported: {e}"
        if not simulated("numba") and not cuda.is_available():
            return "numba cannot reach a CUDA GPU (numba.cuda.is_available() is False: no GPU or driver here)"
    if name == "cupy" and simulated("cupy"):
        from .backends.cupy import hostemu
        if hostemu.compiler() is None:
            return "GPUCNN_CUPY_EMULATE=1 needs g++ to build the kernels for the CPU, and none was found"
    elif name == "cupy":
        try:
            import cupy
        except Exception as e:
            return f"cupy is not installed or cannot load ({type(e).__name__}: {e}); pip install 'gpucnn[cuda]'"
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy sees no CUDA device"
        except Exception as e:
            return f"cupy cannot reach a CUDA device: {e}"
    if importlib.util.find_spec(f"gpucnn.backends.{name}_backend") is None:
        return f"the {name} backend is planned: gpucnn has no {name} kernels yet"
    try:
        _load(name)
    except ImportError as e:
        return f"the {name} backend module cannot be imported: {e}"
    return None


def simulated(name: str) -> bool:
    """True when `name`'s kernels run on the CPU, for tests: Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)
    or the CuPy backend's CUDA C compiled for the host by hostemu (GPUCNN_CUPY_EMULATE=1)."""
    if name == "numba":
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if name == "cupy":
        return os.environ.get("GPUCNN_CUPY_EMULATE") == "1"
    return False


def _load(name: str) -> None:
    if name not in _loaded:
        importlib.import_module(f"gpucnn.backends.{name}_backend")
        _loaded.add(name)


def info() -> dict[str, dict]:
    """For each backend: whether it works here, why not if it does not, and how many ops it has."""
    out = {}
    for name in BACKENDS:
        reason = _probe(name)
        ops = sorted(op for (op, b) in _registry if b == name)
        out[name] = {"available": reason is None, "reason": reason, "ops": ops, "simulated": simulated(name)}
    return out


def available_backends() -> list[str]:
    return [name for name in BACKENDS if _probe(name) is None]


def resolve(name: str) -> str:
    """The concrete backend `name` stands for ('auto': the fastest that works here, never a simulator)."""
    if name == "auto":
        for cand in AUTO_ORDER:
            if not simulated(cand) and _probe(cand) is None:
                return cand
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS + ('auto',))}")
    reason = _probe(name)
    if reason is not None:
        raise BackendError(f"backend {name!r} cannot run here: {reason}")
    return name


class use_backend:
    """Choose the backend every op dispatches to.

    A global switch when called (``use_backend('numpy')``) and a context
    manager that restores the previous backend on exit
    (``with use_backend('cupy'): ...``).
    """

    def __init__(self, name: str):
        global _current
        self.name = resolve(name)
        self._previous = _current
        _current = self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _current
        _current = self._previous
        return False

    def __repr__(self):
        return f"use_backend({self.name!r})"


def current_backend() -> str:
    return _current


def get_op(op: str, backend: str | None = None) -> Callable:
    """The function implementing `op` on `backend` (default: the current one)."""
    backend = _current if backend is None else backend
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (asked for op {op!r}); known: {', '.join(BACKENDS)}")
    try:
        return _registry[(op, backend)]
    except KeyError:
        pass
    try:
        _load(backend)
    except ImportError as e:
        raise BackendError(f"op {op!r} is not available: backend {backend!r} cannot be loaded ({e})") from None
    try:
        return _registry[(op, backend)]
    except KeyError:
        raise BackendError(f"op {op!r} is not implemented on backend {backend!r}") from None


def has_op(op: str, backend: str | None = None) -> bool:
    """Whether `backend` (default: the current one) implements `op` (loading it if needed)."""
    try:
        get_op(op, backend)
    except BackendError:
        return False
    return True


def dispatch(op: str, *args, **kwargs):
    return get_op(op)(*args, **kwargs)
