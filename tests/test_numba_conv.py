"""Numba convolution kernels (gpucnn/backends/numba/conv.py) against the NumPy backend.

Without a GPU the kernels run under Numba's CUDA simulator (conftest sets
NUMBA_ENABLE_CUDASIM=1), one Python thread per CUDA thread, so the shapes are
tiny; they still cover odd sizes, N=1, C=1, strides 1..3 (and 6, which shrinks
the tiled kernel's pixel tile), paddings 0..2, 'same' with even kernels
(asymmetric padding), 1x1, 2x3, 3x3, 5x5 and 7x7 kernels (chunked filter
tiles), partial channel groups. Outputs start NaN-poisoned, so an element a
kernel forgets to write fails the comparison.
"""
import numpy as np
import pytest

pytest.importorskip("numba")

import gpucnn  # noqa: E402
from gpucnn import backend, shapes  # noqa: E402
from gpucnn.backends.numba import _common  # noqa: E402

conv = pytest.importorskip("gpucnn.backends.numba.conv")

RTOL, ATOL = 1e-4, 1e-5

# id: (N, C, H, W, K, R, S, stride, padding)
CASES = {
    "1x1_C1": (1, 1, 5, 5, 2, 1, 1, 1, 0),
    "3x3_pad1_N2": (2, 3, 7, 6, 5, 3, 3, 1, 1),
    "2x3_stride2x1_pad2x1": (1, 2, 7, 9, 3, 2, 3, (2, 1), (2, 1)),
    "5x5_pad2": (1, 2, 6, 7, 3, 5, 5, 1, 2),
    "same_2x2": (1, 2, 5, 6, 3, 2, 2, 1, "same"),
    "same_4x2_C1": (1, 1, 7, 5, 2, 4, 2, 1, "same"),
    "3x3_stride2_C5_K5": (2, 5, 5, 5, 5, 3, 3, 2, 1),
    "7x7_stride3_chunked": (1, 2, 9, 9, 3, 7, 7, 3, 1),
    "3x3_stride6x1_small_tile": (1, 2, 19, 6, 2, 3, 3, (6, 1), 0),
}


@pytest.fixture(autouse=True)
def poison():
    old = _common.POISON
    _common.POISON = True
    yield
    _common.POISON = old


def _inputs(case, dtype=np.float32, seed=0):
    n, c, h, w, k, r, s, stride, padding = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, r, s)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    stride_hw, pads, out_shape = shapes.check_conv2d(x, wt, b, stride, padding)
    return x, wt, b, stride_hw, pads, out_shape


def _host(a):
    assert hasattr(a, "copy_to_host"), f"expected a Numba device array, got {type(a).__name__}"
    out = a.copy_to_host()
    assert not np.isnan(out).any(), "NaN in the output: an element was never written"
    return out


def _check(actual, expected, name, rtol=RTOL, atol=ATOL):
    got = _host(actual)
    assert got.dtype == expected.dtype, f"{name}: dtype {got.dtype}, expected {expected.dtype}"
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- forward

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kernel", ["naive", "tiled"])
def test_forward_matches_numpy(case, kernel):
    x, w, b, stride, pads, out_shape = _inputs(case)
    ref = backend.get_op("conv2d", "numpy")(x, w, b, stride, pads, out_shape)
    launch = conv.conv2d_naive if kernel == "naive" else conv.conv2d_tiled
    _check(launch(x, w, b, stride, pads, out_shape), ref, f"conv2d {kernel} {case}")


@pytest.mark.parametrize("case", ["3x3_pad1_N2", "same_2x2", "7x7_stride3_chunked"])
def test_fused_relu_matches_numpy(case):
    x, w, b, stride, pads, out_shape = _inputs(case, seed=1)
    ref = backend.get_op("conv2d_relu", "numpy")(x, w, b, stride, pads, out_shape)
    assert (ref == 0).any() and (ref > 0).any()  # the ReLU actually clips something
    _check(backend.get_op("conv2d_relu", "numba")(x, w, b, stride, pads, out_shape), ref, "conv2d_relu tiled")
    _check(conv.conv2d_naive(x, w, b, stride, pads, out_shape, relu=True), ref, "conv2d_relu naive")


def test_registered_conv2d_is_tiled_without_bias():
    x, w, _, stride, pads, out_shape = _inputs("5x5_pad2", seed=2)
    ref = backend.get_op("conv2d", "numpy")(x, w, None, stride, pads, out_shape)
    _check(backend.get_op("conv2d", "numba")(x, w, None, stride, pads, out_shape), ref, "conv2d no bias")


def test_device_arrays_in_device_arrays_out():
    from numba import cuda

    x, w, b, stride, pads, out_shape = _inputs("same_4x2_C1", seed=3)
    ref = backend.get_op("conv2d", "numpy")(x, w, b, stride, pads, out_shape)
    y = backend.get_op("conv2d", "numba")(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b),
                                          stride, pads, out_shape)
    assert tuple(y.shape) == out_shape
    _check(y, ref, "conv2d from device arrays")


# --------------------------------------------------------------------------- backward

@pytest.mark.parametrize("case", list(CASES))
def test_backward_matches_numpy(case):
    x, w, _, stride, pads, out_shape = _inputs(case, seed=4)
    dy = np.random.default_rng(5).standard_normal(out_shape).astype(np.float32)
    rdx, rdw, rdb = backend.get_op("conv2d_backward", "numpy")(dy, x, w, stride, pads, True)
    dx, dw, db = backend.get_op("conv2d_backward", "numba")(dy, x, w, stride, pads, True)
    assert tuple(dx.shape) == x.shape and tuple(dw.shape) == w.shape and tuple(db.shape) == (w.shape[0],)
    _check(dx, rdx, f"dx {case}")
    _check(dw, rdw, f"dw {case}")
    _check(db, rdb, f"db {case}")


def test_backward_without_input_grad():
    x, w, _, stride, pads, out_shape = _inputs("2x3_stride2x1_pad2x1", seed=6)
    dy = np.random.default_rng(7).standard_normal(out_shape).astype(np.float32)
    _, rdw, rdb = backend.get_op("conv2d_backward", "numpy")(dy, x, w, stride, pads, False)
    dx, dw, db = backend.get_op("conv2d_backward", "numba")(dy, x, w, stride, pads, input_grad=False)
    assert dx is None
    _check(dw, rdw, "dw")
    _check(db, rdb, "db")


def test_weight_grad_reduction_uses_many_threads_and_tap_chunks():
    """N*P*Q large enough for a full RED_THREADS block and a 5x5 filter (25 taps: 3 DW_TAPS chunks)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 1, 16, 17)).astype(np.float32)
    w = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    stride, pads, out_shape = shapes.check_conv2d(x, w, None, 1, 2)
    assert out_shape[0] * out_shape[2] * out_shape[3] >= conv.RED_THREADS * conv.RED_MIN_ITEMS
    dy = rng.standard_normal(out_shape).astype(np.float32)
    _, rdw, rdb = backend.get_op("conv2d_backward", "numpy")(dy, x, w, stride, pads, False)
    _, dw, db = conv.conv2d_backward(dy, x, w, stride, pads, input_grad=False)
    _check(dw, rdw, "dw", rtol=1e-4, atol=1e-4)
    _check(db, rdb, "db", rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- float64, dispatch, geometry

def test_float64_forward_and_backward():
    x, w, b, stride, pads, out_shape = _inputs("2x3_stride2x1_pad2x1", dtype=np.float64, seed=9)
    ref = backend.get_op("conv2d_relu", "numpy")(x, w, b, stride, pads, out_shape)
    _check(conv.conv2d_relu(x, w, b, stride, pads, out_shape), ref, "conv2d_relu float64", rtol=1e-12, atol=1e-12)
    _check(conv.conv2d_naive(x, w, b, stride, pads, out_shape, relu=True), ref, "naive float64",
           rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(10).standard_normal(out_shape)
    for got, exp, name in zip(conv.conv2d_backward(dy, x, w, stride, pads),
                              backend.get_op("conv2d_backward", "numpy")(dy, x, w, stride, pads), "dx dw db".split()):
        _check(got, exp, name + " float64", rtol=1e-12, atol=1e-12)


def test_through_functional_with_use_backend():
    x, w, b, *_ = _inputs("same_2x2", seed=11)
    try:
        with gpucnn.use_backend("numba"):
            pass
    except backend.BackendError as e:  # pragma: no cover - depends on gpucnn/backend.py's simulator support
        pytest.skip(f"use_backend('numba') refused: {e}")
    F = gpucnn.functional
    with gpucnn.use_backend("numpy"):
        ref = F.conv2d_relu(x, w, b, padding="same")
        rdx, rdw, rdb = F.conv2d_backward(ref, x, w, padding="same")
    with gpucnn.use_backend("numba"):
        y = F.conv2d_relu(x, w, b, padding="same")
        dx, dw, db = F.conv2d_backward(y, x, w, padding="same")
    _check(y, ref, "F.conv2d_relu")
    for got, exp, name in zip((dx, dw, db), (rdx, rdw, rdb), "dx dw db".split()):
        _check(got, exp, "F.conv2d_backward " + name)


@pytest.mark.parametrize("case", list(CASES))
def test_tiled_geometry_fits_shared_tiles(case):
    x, w, _, stride, _, out_shape = _inputs(case)
    grid, block, k_groups, rt, st = conv._geometry_fwd(out_shape, w.shape, stride)
    tw, th, tk = block
    n, k, p, q = out_shape
    assert 1 <= tw <= conv.TILE_Q and 1 <= th <= conv.TILE_P and 1 <= tk <= conv.TILE_K
    assert 1 <= rt <= conv.SMEM_F and 1 <= st <= conv.SMEM_F
    assert (th - 1) * stride[0] + rt <= conv.SMEM_IN and (tw - 1) * stride[1] + st <= conv.SMEM_IN
    assert grid == (n * k_groups, -(-p // th), -(-q // tw)) and k_groups * tk >= k
    assert tw * th * tk * grid[0] * grid[1] * grid[2] <= 1100  # simulator-sized launches
