"""The numba backend's elementwise kernels against the NumPy backend (pooling: tests/ops/test_pool.py).

Runs under Numba's CUDA simulator without a GPU (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1 before numba is imported), so every launch stays tiny:
the simulator runs each CUDA thread as a Python thread. Outputs are
NaN-poisoned (`_common.POISON`), so an element a kernel forgets to write fails.
"""
import numpy as np
import pytest

numba = pytest.importorskip("numba")

import gpucnn
from gpucnn import backend
from gpucnn import functional as F
from gpucnn.backends.numba import _common

if "numba" not in backend.available_backends():
    pytest.skip(f"numba backend unavailable: {backend.info()['numba']['reason']}", allow_module_level=True)

# the simulator runs numba.cuda.random's uint64 arithmetic on NumPy scalars, which warn on (intended) wrap-around
# and its module asks for object mode there (a deprecated keyword)
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:The keyword argument 'nopython=False':DeprecationWarning")]

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def host(a):
    """A numba result back on the host (it must be a device array, not a NumPy array)."""
    assert hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray), f"expected a device array, got {type(a)}"
    return a.copy_to_host()


def check(got, ref, exact=False):
    got = host(got)
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.shape, ref.dtype)
    if got.dtype.kind == "f":
        assert not np.isnan(got).any(), "NaN in the output: an element was never written"
    if exact:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def both(fn, *args, **kwargs):
    """fn(*args) on the numpy backend (the reference), then on the numba backend."""
    with gpucnn.use_backend("numpy"):
        ref = fn(*args, **kwargs)
    with gpucnn.use_backend("numba"):
        got = fn(*args, **kwargs)
    return got, ref


def normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- elementwise

@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 7), (1,)])
def test_relu_and_backward(shape):
    x = normal(10, shape)
    x.flat[::4] = 0  # exact zeros: relu_backward passes dy only where x > 0
    y, y_ref = both(F.relu, x)
    check(y, y_ref, exact=True)
    dx, dx_ref = both(F.relu_backward, normal(11, shape), x)
    check(dx, dx_ref, exact=True)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,)])
def test_add(shape):
    c, c_ref = both(F.add, normal(12, shape), normal(13, shape))
    check(c, c_ref)


@pytest.mark.parametrize("shape,scale", [((2, 3, 4, 5), 2), ((1, 2, 3, 5), (1, 3)), ((1, 1, 3, 3), (3, 2))])
def test_upsample_nearest2d(shape, scale):
    x = normal(14, shape)
    y, y_ref = both(F.upsample_nearest2d, x, scale)
    check(y, y_ref, exact=True)
    dx, dx_ref = both(F.upsample_nearest2d_backward, normal(15, y_ref.shape), scale)
    check(dx, dx_ref)


@pytest.mark.parametrize("channels", [[1, 2, 3], [2], [1, 1]])
def test_concat_and_backward(channels):
    xs = [normal(16 + i, (2, c, 3, 5)) for i, c in enumerate(channels)]
    y, y_ref = both(F.concat, xs)
    check(y, y_ref, exact=True)
    parts, parts_ref = both(F.concat_backward, normal(20, y_ref.shape), channels)
    assert isinstance(parts, list) and len(parts) == len(parts_ref)
    for got, ref in zip(parts, parts_ref):
        check(got, ref, exact=True)


def test_ops_take_device_arrays():
    from numba import cuda

    xs = [normal(21, (1, 2, 3, 3)), normal(22, (1, 1, 3, 3))]
    with gpucnn.use_backend("numba"):
        y = F.concat([cuda.to_device(x) for x in xs])
        z = F.relu(y)  # a device output as the next op's input
    check(y, np.concatenate(xs, axis=1), exact=True)
    check(z, np.maximum(np.concatenate(xs, axis=1), 0), exact=True)


# --------------------------------------------------------------------------- dropout

def _dropout(x, p, seed):
    with gpucnn.use_backend("numba"):
        y, mask = F.dropout(x, p, seed=seed)
    return host(y), host(mask)


def test_dropout_mask_and_rate():
    p = 0.3
    x = normal(30, (2, 5, 10, 10))  # 1,000 elements
    y, mask = _dropout(x, p, seed=5)
    scale = np.float32(1) / np.float32(1 - p)
    assert not np.isnan(mask).any() and not np.isnan(y).any()
    assert set(np.unique(mask)) <= {np.float32(0), scale}
    np.testing.assert_array_equal(y, x * mask)
    dropped = np.mean(mask == 0)
    assert abs(dropped - p) < 0.06, dropped  # about 4 standard deviations for 1,000 draws

    y2, mask2 = _dropout(x, p, seed=5)
    np.testing.assert_array_equal(mask2, mask)  # same seed, same mask
    np.testing.assert_array_equal(y2, y)
    _, mask3 = _dropout(x, p, seed=6)
    assert np.mean(mask3 != mask) > 0.2  # a different seed: a different mask
    _, mask4 = _dropout(x, p, seed=None)  # a seed drawn from np.random
    assert set(np.unique(mask4)) <= {np.float32(0), scale}


def test_dropout_backward():
    x, dy = normal(31, (2, 3, 4, 5)), normal(32, (2, 3, 4, 5))
    with gpucnn.use_backend("numba"):
        _, mask = F.dropout(x, 0.5, seed=1)
        dx = F.dropout_backward(dy, mask)
    mask = host(mask)
    check(dx, dy * mask, exact=True)
    got, ref = both(F.dropout_backward, dy, mask)  # a host mask against the NumPy backend
    check(got, ref, exact=True)


def test_dropout_eval_and_p0_pass_through():
    x = normal(33, (1, 2, 3, 3))
    with gpucnn.use_backend("numba"):
        assert F.dropout(x, 0.5, training=False)[1] is None
        assert F.dropout(x, 0.0)[1] is None


# --------------------------------------------------------------------------- float64 (numba specializes per dtype)

def test_float64():
    x = normal(40, (1, 2, 5, 7), np.float64)
    check(*both(F.relu, x), exact=True)
    check(*both(F.relu_backward, normal(43, x.shape, np.float64), x), exact=True)
    check(*both(F.add, x, x))
    check(*both(F.upsample_nearest2d_backward, normal(44, (1, 2, 10, 7), np.float64), (2, 1)))
    y, mask = _dropout(x, 0.5, seed=3)
    assert y.dtype == mask.dtype == np.float64
    assert set(np.unique(mask)) <= {0.0, 2.0}
    np.testing.assert_array_equal(y, x * mask)
