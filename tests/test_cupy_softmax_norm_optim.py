"""The cupy backend's softmax, batch-norm and optimizer kernels (kernels/{softmax,norm,optim}.cu) against NumPy."""
import numpy as np
import pytest

from cupy_support import device, host, ref, run
from helpers import assert_close


def _rand(shape, seed, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(np.float32)


# --------------------------------------------------------------------------- softmax family

# (shape, dim): the last dim (warp-per-row kernels, rows shorter and longer than a warp, more rows
# than a block's warps) and inner dims (thread-per-row strided kernels), negative dims.
SOFTMAX_CASES = [((1, 1), 1), ((4, 10), 1), ((3, 77), -1), ((37, 5), 1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 3),
                 ((5, 7, 3), 0), ((2, 6, 3, 3), -3), ((7,), 0), ((300, 3), 0)]


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_softmax_log_softmax_and_backward(shape, dim):
    x = _rand(shape, len(shape) + shape[-1], scale=3)
    y = run("softmax", x, dim)
    assert_close(host(y), ref("softmax", x, dim), rtol=2e-6, atol=1e-7, name="softmax")
    assert_close(host(run("log_softmax", x, dim)), ref("log_softmax", x, dim), rtol=2e-6, atol=2e-6,
                 name="log_softmax")
    y_ref = ref("softmax", x, dim)
    dy = _rand(shape, 5)
    assert_close(host(run("softmax_backward", dy, y_ref, dim)), ref("softmax_backward", dy, y_ref, dim),
                 rtol=1e-5, atol=1e-6, name="softmax_backward")


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1003.0]], np.float32)
    assert_close(host(run("softmax", x)), ref("softmax", x), rtol=1e-6, atol=1e-7)
    assert_close(host(run("log_softmax", x)), ref("log_softmax", x), rtol=1e-6, atol=1e-6)
    xs = np.ascontiguousarray(x.T[None])  # (1, 3, 2): the strided kernels, the maximum last along dim 1
    xs[0, 2] += 200  # exp overflows unless this maximum is the one subtracted
    assert_close(host(run("softmax", xs, 1)), ref("softmax", xs, 1), rtol=1e-6, atol=1e-7)
    assert_close(host(run("log_softmax", xs, 1)), ref("log_softmax", xs, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,c,label_dtype", [(1, 1, np.int64), (1, 3, np.int64), (5, 10, np.int32),
                                             (37, 7, np.int64), (9, 70, np.int64), (300, 4, np.int32),
                                             (6, 5, np.uint8)])
def test_softmax_cross_entropy_loss_and_gradient(n, c, label_dtype):
    logits = _rand((n, c), n * c, scale=4, shift=50)  # a large shift: the stable log-sum-exp is needed
    labels = np.random.default_rng(n).integers(0, c, n).astype(label_dtype)
    loss, d = run("softmax_cross_entropy", logits, labels)
    loss_ref, d_ref = ref("softmax_cross_entropy", logits, labels)
    loss = host(loss)
    assert loss.shape == () and loss.dtype == np.float32
    assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6, name="loss")
    assert_close(host(d), d_ref, rtol=1e-5, atol=1e-7, name="dlogits")
    again, _ = run("softmax_cross_entropy", logits, labels)  # deterministic: the same bits every time
    assert host(again).tobytes() == loss.tobytes()


def test_softmax_family_refuses_bad_inputs():
    x = _rand((4, 6), 0)
    with pytest.raises(TypeError, match="float32"):
        run("softmax", x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        run("log_softmax", device(_rand((4, 12), 0))[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        run("softmax_backward", x, device(_rand((4, 12), 0))[:, ::2])
    with pytest.raises(TypeError, match="float32"):
        run("softmax_cross_entropy", x.astype(np.float64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        run("softmax_cross_entropy", x, device(np.zeros(8, np.int64))[::2])


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
