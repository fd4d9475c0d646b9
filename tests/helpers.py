"""Two test helpers: assert_close (llm.c style report) and check_grad (central differences)."""
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
