"""The cupy backend's pooling kernels (kernels/pool.cu) against the NumPy backend."""
import numpy as np
import pytest

from cupy_support import device, host, ref, run
from gpucnn import backend, shapes
from helpers import assert_close

# (x shape, kernel, stride): odd sizes, non-square windows and inputs, stride != kernel (overlapping
# and gapped windows, floor leftovers), batch 1, one channel, a case with more outputs than a block.
CASES = [
    ((1, 1, 2, 2), 2, None),
    ((2, 3, 7, 7), 2, None),
    ((1, 2, 9, 6), 3, 2),
    ((2, 2, 8, 11), (2, 3), (1, 2)),
    ((1, 3, 10, 9), (3, 2), (3, 3)),
    ((3, 1, 5, 5), 1, None),
    ((2, 4, 13, 12), 2, 1),   # 2*4*12*11 = 1056 outputs: more than one 256-thread block
    ((1, 1, 6, 5), (4, 5), 1),
]


def _x(shape, ties=False):
    rng = np.random.default_rng(int(np.prod(shape)))
    if ties:  # few distinct values: many windows hold their maximum more than once
        return rng.integers(-2, 3, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _fused(op, x, kernel, stride, backend_name):
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel, stride)
    return backend.get_op(op, backend_name)(x, kernel_hw, stride_hw, out_shape)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,kernel,stride", CASES)
def test_max_pool_values_indices_and_backward(shape, kernel, stride, ties):
    x = _x(shape, ties)
    y, idx = run("max_pool2d", x, kernel, stride, return_indices=True)
    y_ref, idx_ref = ref("max_pool2d", x, kernel, stride, return_indices=True)
    assert_close(host(y), y_ref, rtol=0, atol=0, name="y")
    idx = host(idx)
    assert idx.dtype == idx_ref.dtype == np.int64
    np.testing.assert_array_equal(idx, idx_ref)
    dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
    want = ref("max_pool2d_backward", dy, x, kernel, stride, indices=idx_ref)
    assert_close(host(run("max_pool2d_backward", dy, x, kernel, stride, indices=idx)), want, rtol=1e-6, atol=1e-6)
    assert_close(host(run("max_pool2d_backward", dy, x, kernel, stride)), want, rtol=1e-6, atol=1e-6)  # recomputed
    assert_close(host(run("max_pool2d_backward", dy, x, kernel, stride, indices=idx.astype(np.int32))), want,
                 rtol=1e-6, atol=1e-6)  # int32 indices: the <int> instance
    assert_close(host(run("max_pool2d_backward", dy, x, kernel, stride, indices=idx.astype(np.int16))), want,
                 rtol=1e-6, atol=1e-6)  # other integer types: converted to int64


@pytest.mark.parametrize("shape,kernel,stride", CASES)
def test_relu_max_pool_matches_relu_then_max_pool(shape, kernel, stride):
    x = _x(shape)
    x.flat[::3] = -np.abs(x.flat[::3])  # plenty of negative values, some all-negative windows
    y, idx = _fused("relu_max_pool2d", x, kernel, stride, "cupy")
    y_ref, idx_ref = _fused("relu_max_pool2d", x, kernel, stride, "numpy")
    y_two, idx_two = ref("max_pool2d", ref("relu", x), kernel, stride, return_indices=True)
    np.testing.assert_array_equal(y_ref, y_two)
    np.testing.assert_array_equal(idx_ref, idx_two)
    assert_close(host(y), y_ref, rtol=0, atol=0, name="y")
    np.testing.assert_array_equal(host(idx), idx_ref)


@pytest.mark.parametrize("shape,kernel,stride", CASES)
def test_avg_pool_and_backward(shape, kernel, stride):
    x = _x(shape)
    y = run("avg_pool2d", x, kernel, stride)
    y_ref = ref("avg_pool2d", x, kernel, stride)
    assert_close(host(y), y_ref, rtol=1e-6, atol=1e-6)
    dy = np.random.default_rng(2).standard_normal(y_ref.shape).astype(np.float32)
    assert_close(host(run("avg_pool2d_backward", dy, x, kernel, stride)),
                 ref("avg_pool2d_backward", dy, x, kernel, stride), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_refuses_float64_and_strided_inputs(op):
    x = _x((2, 3, 8, 8))
    with pytest.raises(TypeError, match="float32"):
        run(op, x.astype(np.float64), 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        run(op, device(np.ones((2, 3, 8, 16), np.float32))[..., ::2], 2)
    dy = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        run(f"{op}_backward", device(np.ones((2, 3, 4, 8), np.float32))[..., ::2], x, 2)
    with pytest.raises(TypeError, match="float32"):
        run(f"{op}_backward", dy.astype(np.float64), x.astype(np.float64), 2)


def test_max_pool_backward_refuses_strided_indices():
    x = _x((1, 2, 4, 4))
    dy = np.ones((1, 2, 2, 2), np.float32)
    idx = device(np.zeros((1, 2, 2, 4), np.int64))[..., ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        run("max_pool2d_backward", dy, x, 2, indices=idx)
