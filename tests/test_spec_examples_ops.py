"""The worked examples of the spec, number for number, through gpucnn.functional (NumPy backend)."""
import numpy as np
import pytest

import gpucnn.functional as F

import oracle as O
from helpers import assert_close

DTYPES = [np.float32, np.float64]

IMAGE = np.array([
    [1, 7, 7, 8, 9, 4, 2, 6],
    [3, 8, 6, 3, 4, 9, 6, 0],
    [4, 7, 4, 7, 0, 1, 1, 4],
    [6, 6, 2, 6, 3, 6, 2, 5],
    [8, 5, 1, 2, 2, 0, 6, 3],
    [0, 5, 5, 4, 2, 7, 9, 3],
    [6, 3, 9, 1, 9, 6, 0, 9],
    [1, 4, 0, 5, 2, 1, 0, 1],
])
KERNEL = np.array([[3, 3, 5], [2, 1, 1], [3, 0, 4]])

VERTICAL = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]])
HORIZONTAL = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]])
SOBEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]])


def nchw(a, dtype):
    return np.asarray(a, dtype)[None, None]


@pytest.mark.parametrize("dtype", DTYPES)
def test_worked_example_stride_1(dtype):
    y = F.conv2d(nchw(IMAGE, dtype), nchw(KERNEL, dtype))
    assert y.shape == (1, 1, 6, 6) and y.dtype == dtype
    # 1*3 + 7*3 + 7*5 + 3*2 + 8*1 + 6*1 + 4*3 + 7*0 + 4*4 = 107
    assert y[0, 0, 0, 0] == 107 and y[0, 0, 0, 1] == 156
    assert_close(y, O.conv2d(nchw(IMAGE, dtype), nchw(KERNEL, dtype)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_worked_example_stride_2(dtype):
    y = F.conv2d(nchw(IMAGE, dtype), nchw(KERNEL, dtype), stride=2)
    assert y.shape == (1, 1, 3, 3) and y.dtype == dtype
    assert y[0, 0, 0, 0] == 107 and y[0, 0, 0, 1] == 121
    assert_close(y, O.conv2d(nchw(IMAGE, dtype), nchw(KERNEL, dtype), stride=(2, 2)), rtol=0, atol=0)
    y1 = F.conv2d(nchw(IMAGE, dtype), nchw(KERNEL, dtype))
    assert_close(y, y1[:, :, ::2, ::2], rtol=0, atol=0)  # stride 2 = every other stride-1 output


# n, f, stride, padding, expected output size
@pytest.mark.parametrize("n,f,s,p,out", [
    (8, 3, 1, 0, 6), (8, 3, 2, 0, 3), (10, 3, 1, 0, 8), (28, 5, 1, 0, 24),
    (6, 3, 1, 1, 6), (7, 3, 2, 0, 3), (7, 3, 2, 1, 4), (5, 5, 1, 0, 1), (9, 4, 3, 2, 4),
])
def test_output_size(n, f, s, p, out):
    x = np.random.default_rng(n * 100 + f).standard_normal((1, 1, n, n)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 1, f, f)).astype(np.float32)
    assert F.conv2d(x, w, stride=s, padding=p).shape == (1, 2, out, out)


def test_28_conv5_pool2():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    y = F.conv2d(x, w)
    assert y.shape == (2, 6, 24, 24)
    pooled = F.max_pool2d(y, 2)
    assert pooled.shape == (2, 6, 12, 12)
    assert_close(pooled, y.reshape(2, 6, 12, 2, 12, 2).max(axis=(3, 5)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_example(dtype):
    x = nchw([[1, 7, 7, 2], [3, 8, 6, 3], [4, 7, 4, 7], [6, 6, 2, 6]], dtype)
    y, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    np.testing.assert_array_equal(y[0, 0], [[8, 7], [7, 7]])
    # first maximum of each window, flat h*W+w: 8 at (1,1); 7 at (0,2); 7 at (2,1); 7 at (2,3)
    np.testing.assert_array_equal(idx[0, 0], [[5, 2], [9, 11]])
    dx = F.max_pool2d_backward(nchw([[1, 2], [3, 4]], dtype), x, 2, stride=2)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 2, 0], [0, 1, 0, 0], [0, 3, 0, 4], [0, 0, 0, 0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_example(dtype):
    y = F.upsample_nearest2d(nchw([[8, 6], [7, 7]], dtype), 2)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], [[8, 8, 6, 6], [8, 8, 6, 6], [7, 7, 7, 7], [7, 7, 7, 7]])


def step_image(n=8, bright_first=True, axis="vertical"):
    """Bright (10) half and dark (0) half split by a vertical (left|right) or horizontal (top/bottom) edge."""
    img = np.zeros((n, n))
    hi, lo = (10.0, 0.0) if bright_first else (0.0, 10.0)
    if axis == "vertical":
        img[:, : n // 2], img[:, n // 2:] = hi, lo
    else:
        img[: n // 2, :], img[n // 2:, :] = hi, lo
    return img


def edge_expectation(n, value, axis):
    """Response `value` on the two output rows/columns whose windows straddle the edge, 0 elsewhere."""
    out = np.zeros((n - 2, n - 2))
    if axis == "vertical":
        out[:, n // 2 - 2: n // 2] = value
    else:
        out[n // 2 - 2: n // 2, :] = value
    return out


# filter, edge axis, bright half first (left/top), expected response on the edge
@pytest.mark.parametrize("filt,axis,bright_first,value", [
    (VERTICAL, "vertical", True, 30), (VERTICAL, "vertical", False, -30), (VERTICAL, "horizontal", True, 0),
    (HORIZONTAL, "horizontal", True, 30), (HORIZONTAL, "horizontal", False, -30), (HORIZONTAL, "vertical", True, 0),
    (SOBEL, "vertical", True, 40), (SOBEL, "vertical", False, -40), (SOBEL, "horizontal", True, 0),
    (SOBEL.T, "horizontal", True, 40), (SOBEL.T, "vertical", False, 0),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_filters(filt, axis, bright_first, value, dtype):
    img = step_image(8, bright_first, axis)
    y = F.conv2d(nchw(img, dtype), nchw(filt, dtype))
    np.testing.assert_array_equal(y[0, 0], edge_expectation(8, value, axis))


def test_edge_filters_as_one_conv():
    """The three filters as K=3 output channels of one conv2d call on a 2-image batch."""
    filters = np.stack([VERTICAL, HORIZONTAL, SOBEL])[:, None].astype(np.float32)
    x = np.stack([step_image(8, True, "vertical"), step_image(8, True, "horizontal")])[:, None].astype(np.float32)
    y = F.conv2d(x, filters)
    assert y.shape == (2, 3, 6, 6)
    expected = [[edge_expectation(8, 30, "vertical"), edge_expectation(8, 0, "vertical"), edge_expectation(8, 40, "vertical")],
                [edge_expectation(8, 0, "horizontal"), edge_expectation(8, 30, "horizontal"), edge_expectation(8, 0, "horizontal")]]
    np.testing.assert_array_equal(y, np.array(expected))


@pytest.mark.parametrize("n,f", [(8, 3), (6, 5), (7, 1), (28, 5), (5, 2), (6, 4)])
def test_same_padding_keeps_n(n, f):
    rng = np.random.default_rng(n + f)
    x = rng.standard_normal((1, 2, n, n)).astype(np.float32)
    w = rng.standard_normal((3, 2, f, f)).astype(np.float32)
    y = F.conv2d(x, w, padding="same")
    assert y.shape == (1, 3, n, n)
    assert_close(y, O.conv2d(x, w, None, (1, 1), O.same_pads(f, f)), rtol=1e-4, atol=1e-4)


def test_same_padding_odd_kernel_is_p():
    """For odd f, 'same' is padding p = (f-1)/2 on every side."""
    x = np.random.default_rng(3).standard_normal((1, 1, 8, 8))
    w = nchw(SOBEL, np.float64)
    assert_close(F.conv2d(x, w, padding="same"), F.conv2d(x, w, padding=1), rtol=0, atol=0)
