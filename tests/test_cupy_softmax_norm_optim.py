"""The cupy backend's batch-norm kernels (kernels/norm.cu) against NumPy (softmax: tests/ops/test_softmax.py)."""
import numpy as np
import pytest

from cupy_support import device, host, ref, run
from helpers import assert_close


def _rand(shape, seed, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(np.float32)


# --------------------------------------------------------------------------- batch norm

BN_SHAPES = [(2, 3), (5, 1), (300, 4), (7, 40), (2, 3, 4, 5), (1, 2, 3, 3), (4, 3, 9, 10), (3, 5, 1, 1)]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_forward_backward_and_running_stats(shape, affine):
    c = shape[1]
    x = _rand(shape, sum(shape), scale=2, shift=0.5)
    w = _rand((c,), 1, shift=1) if affine else None
    b = _rand((c,), 2) if affine else None
    rm, rv = _rand((c,), 3), np.abs(_rand((c,), 4)) + 0.5
    rm_ref, rv_ref = rm.copy(), rv.copy()
    rm, rv = device(rm), device(rv)  # updated in place: device arrays
    got = run("batch_norm", x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-4)
    want = ref("batch_norm", x, rm_ref, rv_ref, w, b, training=True, momentum=0.2, eps=1e-4)
    for name, g, e in zip(("y", "save_mean", "save_invstd"), got, want):
        assert_close(host(g), e, rtol=2e-5, atol=2e-6, name=name)
    assert_close(host(rm), rm_ref, rtol=1e-5, atol=1e-6, name="running_mean")
    assert_close(host(rv), rv_ref, rtol=1e-5, atol=1e-6, name="running_var")
    dy = _rand(shape, 6)
    save_mean, save_invstd = want[1], want[2]
    got = run("batch_norm_backward", dy, x, w, save_mean, save_invstd, training=True)
    want = ref("batch_norm_backward", dy, x, w, save_mean, save_invstd, training=True)
    for name, g, e in zip(("dx", "dweight", "dbias"), got, want):
        if e is None:
            assert g is None, name
        else:
            assert_close(host(g), e, rtol=1e-4, atol=2e-5, name=name)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (4, 3, 9, 10)])
def test_batch_norm_eval_forward_and_backward(shape):
    c = shape[1]
    x = _rand(shape, 7)
    w, b = _rand((c,), 8), _rand((c,), 9)
    rm, rv = _rand((c,), 10), np.abs(_rand((c,), 11)) + 0.1
    rm0, rv0 = rm.copy(), rv.copy()
    got = run("batch_norm", x, rm, rv, w, b, training=False)
    want = ref("batch_norm", x, rm, rv, w, b, training=False)
    for name, g, e in zip(("y", "save_mean", "save_invstd"), got, want):
        assert_close(host(g), e, rtol=1e-6, atol=1e-6, name=name)
    np.testing.assert_array_equal(rm, rm0)  # eval leaves the running statistics alone
    np.testing.assert_array_equal(rv, rv0)
    dy = _rand(shape, 12)
    for weight in (w, None):
        got = run("batch_norm_backward", dy, x, weight, want[1], want[2], training=False)
        exp = ref("batch_norm_backward", dy, x, weight, want[1], want[2], training=False)
        for name, g, e in zip(("dx", "dweight", "dbias"), got, exp):
            if e is None:
                assert g is None
            else:
                assert_close(host(g), e, rtol=1e-4, atol=2e-5, name=name)


def test_batch_norm_without_running_stats_and_refusals():
    x = _rand((4, 3, 2, 2), 13)
    got = run("batch_norm", x, None, None, training=True)
    want = ref("batch_norm", x, None, None, training=True)
    for g, e in zip(got, want):
        assert_close(host(g), e, rtol=2e-5, atol=2e-6)
    rm, rv = device(np.zeros(3, np.float32)), device(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="float32"):
        run("batch_norm", x.astype(np.float64), device(np.zeros(3)), device(np.ones(3)), training=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        run("batch_norm", device(_rand((4, 3, 2, 4), 0))[..., ::2], rm, rv, training=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        run("batch_norm", x, device(np.zeros(6, np.float32))[::2], rv, training=True)
    with pytest.raises(TypeError, match="updated in place"):  # a host array would update an uploaded copy
        run("batch_norm", x, np.zeros(3, np.float32), rv, training=True)
    assert np.all(host(rm) == 0) and np.all(host(rv) == 1)  # refused before any launch: nothing was updated
