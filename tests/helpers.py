"""Test helpers: assert_close (llm.c style report), check_grad (central differences), and the backends
under test (host, On, ref, on, grid: each op case declared once, run on every backend that can run it)."""
from __future__ import annotations

import numpy as np


def assert_close(actual, expected, rtol=1e-5, atol=1e-8, name="value"):
    """|actual - expected| <= atol + rtol * |expected| everywhere, same shape; print the first mismatches."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    assert np.all(np.isfinite(a)), f"{name}: non-finite values in the result"
    err = np.abs(a - e)
    bad = ~(err <= atol + rtol * np.abs(e))
    if bad.any():
        where = np.argwhere(bad)
        lines = [f"{name}: {bad.sum()} of {bad.size} mismatch (rtol={rtol}, atol={atol}); "
                 f"max abs err {err.max():.3e}"]
        for pos in where[:5]:
            pos = tuple(int(i) for i in pos)
            lines.append(f"  at {pos}: got {a[pos]!r}, expected {e[pos]!r}, err {err[pos]:.3e}")
        msg = "\n".join(lines)
        print(msg)
        raise AssertionError(msg)


def numeric_grad(loss, arr, eps=1e-6):
    """Central differences of the scalar loss() with respect to every element of `arr`, perturbed in place."""
    assert arr.dtype == np.float64 and arr.flags["C_CONTIGUOUS"], "numeric_grad needs a C-contiguous float64 array"
    flat = arr.reshape(-1)  # a view: writing flat perturbs arr
    out = np.zeros(arr.size)
    for i in range(arr.size):
        orig = flat[i]
        flat[i] = orig + eps
        up = loss()
        flat[i] = orig - eps
        down = loss()
        flat[i] = orig
        out[i] = (up - down) / (2 * eps)
    return out.reshape(arr.shape)


def check_grad(f, inputs, wrt, grad, dy=None, eps=1e-6, rtol=1e-5, atol=1e-6, name=None):
    """Compare an analytic gradient with central differences of L = sum(f(*inputs) * dy).

    f: function of the arrays in `inputs` returning one array (a scalar when dy is None).
    wrt: index into `inputs` of the array to differentiate by; every element is
    perturbed by +-eps (shapes here are tiny). grad: the analytic dL/d inputs[wrt].
    All arrays must be float64 (finite differences in float32 are meaningless).
    """
    inputs = [np.array(a, copy=True, order="C") if isinstance(a, np.ndarray) else a for a in inputs]
    x = inputs[wrt]
    assert x.dtype == np.float64, f"check_grad needs float64 inputs, got {x.dtype}"
    dy = np.float64(1.0) if dy is None else np.asarray(dy)
    assert dy.dtype == np.float64

    def loss():
        out = np.asarray(f(*inputs))
        assert out.shape == np.shape(dy) or np.ndim(dy) == 0, f"f returned {out.shape}, dy is {np.shape(dy)}"
        return float(np.sum(out.astype(np.float64) * dy))

    numeric = numeric_grad(loss, x, eps)
    assert np.any(numeric != 0), "degenerate check: the numerical gradient is all zero"
    assert_close(grad, numeric, rtol=rtol, atol=atol, name=name or f"grad wrt input {wrt}")


# ----------------------------------------------------------------------------- backends under test

BACKENDS = ("numpy", "numba", "cupy")
SIM = ("numpy", "numba", "cupy")   # a case cheap enough for Numba's simulator (and the cupy emulator)
EMU = ("numpy", "cupy")            # too slow for the simulator; cheap enough for the cupy emulator
HOST = ("numpy",)                  # the NumPy backend against the loop oracle only


def why_unavailable(name):
    """None when backend `name` runs here (simulated or emulated counts), else the reason."""
    from gpucnn import backend
    if name not in _REASONS:
        _REASONS[name] = backend.info()[name]["reason"]
    return _REASONS[name]


_REASONS: dict = {}


def host(a, name):
    """A result of backend `name` as a NumPy array, asserting it is that backend's own array type: a
    NumPy array from 'numpy', a Numba device array from 'numba', a cupy.ndarray (emucupy's when
    emulated) from 'cupy' -- a host array out of a GPU backend would be one the GPU never had."""
    if name == "numpy":
        assert isinstance(a, (np.ndarray, np.generic)), f"expected a NumPy array, got {type(a)}"
        return np.asarray(a)
    if name == "numba":
        assert hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray), f"expected a Numba device array, got {type(a)}"
        return a.copy_to_host()
    assert name == "cupy", name
    from gpucnn.backends.cupy import _runtime
    if _runtime.EMULATED:
        assert isinstance(a, _runtime.xp.ndarray), f"expected an (emulated) device array, got {type(a)}"
        return a.get()
    import cupy  # pragma: no cover - GPU only
    assert isinstance(a, cupy.ndarray), f"expected a CuPy array, got {type(a)}"
    return cupy.asnumpy(a)


class On:
    """One backend under test: `run` an op of gpucnn.functional on it, its raw registered `op`, and arrays
    moved to (`device`) and from (`host`) it."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name

    @property
    def reference(self):
        """True for the NumPy backend, which is checked against the loop oracle (the others against it)."""
        return self.name == "numpy"

    def run(self, op, *args, **kwargs):
        from gpucnn import backend, functional
        with backend.use_backend(self.name):
            return getattr(functional, op)(*args, **kwargs)

    def op(self, op):
        from gpucnn import backend
        return backend.get_op(op, self.name)

    def host(self, a):
        return host(a, self.name)

    def device(self, a):
        """A host array copied to the backend (the NumPy backend: the array itself)."""
        from gpucnn import backend
        return backend.get_backend(self.name).asarray(a)


NUMPY = On("numpy")


def ref(op, *args, **kwargs):
    """`gpucnn.functional.<op>(*args)` on the NumPy backend (the reference of the GPU backends)."""
    return NUMPY.run(op, *args, **kwargs)


def on(*names):
    """pytest.param(On(name)) for each backend, id = name, skipped with its reason where it cannot run."""
    import pytest
    return [pytest.param(On(n), id=n, marks=_skip_marks(n)) for n in names]


def _skip_marks(name):
    import pytest
    reason = why_unavailable(name)
    return [pytest.mark.skip(reason=f"{name} backend unavailable: {reason}")] if reason else []


def grid(cases, dtypes=None):
    """pytest.params (On(backend), case[, dtype]) for `cases` = {id: (case, backends)}: each case declared
    once, run on each backend it lists (SIM, EMU or HOST). dtypes: {backend: (dtype, ...)} adds a dtype
    argument; a backend missing from it runs no case; a case may give its own as a third item."""
    import pytest
    out = []
    for cid, (case, names, *own) in cases.items():
        for n in names:
            if dtypes is None:
                out.append(pytest.param(On(n), case, id=f"{n}-{cid}", marks=_skip_marks(n)))
                continue
            for dt in (own[0] if own else {}).get(n, dtypes.get(n, ())):
                out.append(pytest.param(On(n), case, dt, id=f"{n}-{cid}-{np.dtype(dt).name}", marks=_skip_marks(n)))
    return out
