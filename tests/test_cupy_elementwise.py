"""The cupy backend's elementwise kernels (kernels/elementwise.cu) against the NumPy backend."""
import numpy as np
import pytest

from cupy_support import device, host, ref, run
from gpucnn.backends.cupy import _runtime
from helpers import assert_close


@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 3, 5, 4), (3, 1000)])
def test_relu_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(host(run("relu", x)), ref("relu", x), rtol=0, atol=0)
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_close(host(run("relu_backward", dy, x)), ref("relu_backward", dy, x), rtol=0, atol=0)


def test_relu_refuses_float64_and_strided_arrays():
    x = np.random.default_rng(0).standard_normal((4, 6))
    with pytest.raises(TypeError, match="float32"):
        run("relu", x)
    with pytest.raises(ValueError, match="C-contiguous"):  # a strided device view (a host one is uploaded)
        run("relu", device(x.astype(np.float32))[:, ::2])


def _rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _misaligned(a):
    """A C-contiguous device copy of `a` not on a 16-byte boundary: the scalar (V = 1) kernels run."""
    buf = device(np.zeros(a.size + 4, np.float32))
    start = next(s for s in range(1, 4) if (buf.data.ptr + 4 * s) % 16)
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = device(a)
    assert out.data.ptr % 16 and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("shape", [(1,), (5,), (7, 3), (2, 3, 5, 4), (3, 1001)])
def test_relu_add_dropout_backward_both_vector_widths(shape, monkeypatch):
    launched = []
    real = _runtime.Family.launch
    monkeypatch.setattr(_runtime.Family, "launch", lambda self, name, *a: (launched.append(name), real(self, name, *a)))
    rng = np.random.default_rng(len(shape) + shape[-1])
    a, b = _rand(rng, shape), _rand(rng, shape)
    for width, args in [(4, (a, b)), (1, (_misaligned(a), _misaligned(b)))]:  # float4 path, then the scalar path
        launched.clear()
        assert_close(host(run("add", *args)), ref("add", a, b), rtol=0, atol=0)
        assert_close(host(run("relu", args[0])), ref("relu", a), rtol=0, atol=0)
        assert_close(host(run("relu_backward", *args)), ref("relu_backward", a, b), rtol=0, atol=0)
        assert_close(host(run("dropout_backward", *args)), ref("dropout_backward", a, b), rtol=0, atol=0)
        assert launched == [f"{k}<{width}>" for k in ("add_fwd", "relu_fwd", "relu_bwd", "mul_fwd")]


def test_relu_passes_nan_like_numpy():
    x = np.array([np.nan, -1, 2, 0, -0.5], np.float32)
    np.testing.assert_array_equal(host(run("relu", x)), ref("relu", x))


def test_add_refuses_bad_inputs_before_launch():
    a = np.ones((4, 6), np.float32)
    with pytest.raises(TypeError, match="float32"):
        run("add", a.astype(np.float64), a.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        run("add", device(np.ones((4, 12), np.float32))[:, ::2], a)


@pytest.mark.parametrize("shape,scale", [((1, 1, 1, 1), 2), ((2, 3, 4, 5), 2), ((1, 2, 3, 7), (3, 1)),
                                         ((2, 1, 5, 2), (1, 4)), ((3, 4, 9, 10), 3)])
def test_upsample_nearest_matches_numpy(shape, scale):
    rng = np.random.default_rng(shape[-1])
    x = _rand(rng, shape)
    y = run("upsample_nearest2d", x, scale)
    assert_close(host(y), ref("upsample_nearest2d", x, scale), rtol=0, atol=0)
    dy = _rand(rng, y.shape)
    assert_close(host(run("upsample_nearest2d_backward", dy, scale)), ref("upsample_nearest2d_backward", dy, scale),
                 rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,hw", [([1], (1, 1)), ([2, 3], (4, 4)), ([1, 4, 2], (3, 5)), ([3, 5], (17, 19))])
def test_concat_and_backward_match_numpy(channels, hw):
    rng = np.random.default_rng(sum(channels))
    n = 2
    xs = [_rand(rng, (n, c) + hw) for c in channels]
    assert_close(host(run("concat", xs)), ref("concat", xs), rtol=0, atol=0)
    assert_close(host(run("concat", [_misaligned(x) for x in xs])), ref("concat", xs), rtol=0, atol=0)
    dy = _rand(rng, (n, sum(channels)) + hw)
    got, want = run("concat_backward", dy, channels), ref("concat_backward", dy, channels)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(host(g), w, rtol=0, atol=0)


@pytest.mark.parametrize("shape,p", [((3, 5, 7), 0.5), ((1,), 0.3), ((2, 1001), 0.1), ((4, 4), 0.9)])
def test_dropout_output_mask_and_backward(shape, p):
    rng = np.random.default_rng(shape[-1])
    x = _rand(rng, shape)
    y, mask = run("dropout", x, p=p, seed=123)
    y, mask = host(y), host(mask)
    scale = np.float32(1) / np.float32(1 - p)
    assert set(np.unique(mask)) <= {np.float32(0), scale}
    np.testing.assert_array_equal(y, x * mask)
    dy = _rand(rng, shape)
    np.testing.assert_array_equal(host(run("dropout_backward", dy, mask)), dy * mask)
    y2, mask2 = run("dropout", _misaligned(x), p=p, seed=123)  # the scalar kernel draws the same mask
    np.testing.assert_array_equal(host(mask2), mask)


def test_dropout_statistics_determinism_and_seeds():
    x = np.random.default_rng(1).standard_normal(60_001).astype(np.float32) + 3  # no zeros in x
    for p in (0.1, 0.5, 0.8):
        _, mask = run("dropout", x, p=p, seed=7)
        keep = (host(mask) != 0).mean()
        assert abs(keep - (1 - p)) < 4 * np.sqrt(p * (1 - p) / x.size) + 1e-4, (p, keep)
    a = host(run("dropout", x, p=0.5, seed=7)[1])
    b = host(run("dropout", x, p=0.5, seed=7)[1])
    c = host(run("dropout", x, p=0.5, seed=8)[1])
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.4  # independent masks differ in about half of the elements
    d = host(run("dropout", x, p=0.5)[1])  # seed None: a fresh mask
    assert (a != d).mean() > 0.4
    # neighbouring elements are not correlated (counter-based draws of consecutive indices)
    k = (a != 0).astype(np.float64)
    assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 0.03


def test_dropout_eval_and_refusals():
    x = np.ones((3, 4), np.float32)
    y, mask = run("dropout", x, p=0.5, training=False)
    assert y is x and mask is None
    with pytest.raises(TypeError, match="float32"):
        run("dropout", x.astype(np.float64), p=0.5, seed=1)
    with pytest.raises(ValueError, match="C-contiguous"):
        run("dropout", device(np.ones((3, 8), np.float32))[:, ::2], p=0.5, seed=1)
