"""Backends: what one is (the `Backend` interface), which exist here and why not, the op registry, use_backend().

A backend is an object (`Backend`, in backends/_base.py), one per package
``gpucnn.backends.<name>``, found by walking that package (this module names
none of them). It answers for itself:

- ``probe()``: None when it can run here, else the reason it cannot; ``simulated``:
  its kernels run on the CPU for tests (Numba's CUDA simulator, the CuPy emulator);
- arrays: ``asarray`` (host -> backend), ``to_host``, ``empty``, ``zeros``;
- ``synchronize()``, ``timer()`` (a CPU clock or CUDA events) and ``device_facts()``;
- ``capture``: the capture primitive (a step arena, a graph, a stream) where the
  backend has one, else None; ``batch_feeder``: a pinned double-buffered batch
  feeder, or None.

Its ops live in its family modules, which mark their host functions with
``backends._base.register(op, name)``; this module imports the families and
collects the marked functions the first time the backend is asked for an op,
so ``import gpucnn`` never pays for Numba or CuPy, and no backend imports this
module (data flows one way: backend -> backends). Asking
for an op a backend lacks, or for a backend that does not exist, raises an
error naming both: there is never a silent fallback to another backend.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from .backends._base import Backend, CpuTimer  # noqa: F401  (the interface, re-exported)

_registry: dict[tuple[str, str], Callable] = {}
_backends: dict[str, Backend] = {}
_loaded: set[str] = set()
_discovered = False
_current: str | None = None  # the host backend until use_backend says otherwise (see current_backend)


class BackendError(RuntimeError):
    """A backend cannot run here, or lacks an op."""


def _discover() -> dict[str, Backend]:
    """The backend objects: the BACKEND of every package in gpucnn.backends."""
    global _discovered
    if not _discovered:
        from . import backends
        for mod in pkgutil.iter_modules(backends.__path__):
            if mod.ispkg:
                obj = importlib.import_module(f"{backends.__name__}.{mod.name}").BACKEND
                _backends[obj.name] = obj
        _discovered = True
    return _backends


def _load(name: str) -> None:
    """Import backend `name`'s op families and register the functions they mark (once)."""
    if name in _loaded:
        return
    b = get_backend(name)
    package = type(b).__module__
    for family in b.families:
        module = importlib.import_module(f"{package}.{family}")
        for fn in vars(module).values():
            for op, owner in getattr(fn, "__gpucnn_ops__", ()):
                if owner == name:
                    _registry[(op, name)] = fn
    _loaded.add(name)


def host_backend() -> str:
    """The backend whose arrays are host NumPy arrays (the reference, and where a model's state starts)."""
    from .backends import HOST
    return HOST


def names() -> list[str]:
    """Every backend gpucnn has, the host reference first, the fastest last."""
    return [b.name for b in sorted(_discover().values(), key=lambda b: -b.priority)]


def auto_order() -> list[str]:
    """The order 'auto' tries the backends in: fastest first."""
    return names()[::-1]


def get_backend(name: str | None = None) -> Backend:
    """The backend object `name` (default: the current one)."""
    name = current_backend() if name is None else name
    found = _discover().get(name)
    if found is None:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(names())}")
    return found


def register(op: str, backend: str):
    """Decorator: make ``fn`` the implementation of ``op`` on ``backend`` now (for code outside the backend
    packages, which mark their functions with backends._base.register instead)."""
    if backend not in _discover():
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(names())}")

    def deco(fn):
        _registry[(op, backend)] = fn
        return fn

    return deco


def _probe(name: str) -> str | None:
    """None when backend `name` can run on this machine, else the reason it cannot."""
    b = get_backend(name)
    reason = b.probe()
    if reason is not None:
        return reason
    try:
        _load(name)
    except ImportError as e:
        return f"the {name} backend's kernels cannot be imported: {e}"
    return None


def simulated(name: str) -> bool:
    """True when `name`'s kernels run on the CPU, for tests (a simulator or an emulator)."""
    return get_backend(name).simulated


def info() -> dict[str, dict]:
    """For each backend: whether it works here, why not if it does not, and how many ops it has."""
    out = {}
    for name in names():
        reason = _probe(name)
        ops = sorted(op for (op, b) in _registry if b == name)
        out[name] = {"available": reason is None, "reason": reason, "ops": ops, "simulated": simulated(name)}
    return out


def available_backends() -> list[str]:
    return [name for name in names() if _probe(name) is None]


def resolve(name: str) -> str:
    """The concrete backend `name` stands for ('auto': the fastest that works here, never a simulator)."""
    if name == "auto":
        for cand in auto_order():
            if not simulated(cand) and _probe(cand) is None:
                return cand
    if name not in _discover():
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(names() + ['auto'])}")
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
        self._previous = current_backend()
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
    return host_backend() if _current is None else _current


def get_op(op: str, backend: str | None = None) -> Callable:
    """The function implementing `op` on `backend` (default: the current one)."""
    backend = current_backend() if backend is None else backend
    if backend not in _discover():
        raise BackendError(f"unknown backend {backend!r} (asked for op {op!r}); known: {', '.join(names())}")
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


def dispatch(op: str, *args, **kwargs):
    return get_op(op)(*args, **kwargs)


def move(a, source: str, target: str | None = None):
    """Array `a` of backend `source` as an array of `target` (default: the current backend), through the host.
    The one way state (parameters, optimizer buffers) changes backends."""
    target = current_backend() if target is None else target
    if source == target:
        return a
    return get_backend(target).asarray(get_backend(source).to_host(a))
