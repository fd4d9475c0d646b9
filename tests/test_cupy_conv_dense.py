"""The cupy backend's convolution kernels (kernels/conv.cu on gemm.cuh) against the NumPy backend, in exact
FP32 and in TF32 mode (linear: tests/ops/test_dense.py).

Without a GPU the kernels run emulated on the CPU (see tests/cupy_support.py); outputs are NaN-poisoned.
"""
import numpy as np
import pytest

import gpucnn
from cupy_support import device, host, ref, run
from helpers import assert_close
from test_functional import CONV_CASES, CONV_IDS

# Beyond the oracle shapes: several tiles in M and N, K > 128 filters, deep reductions (split-K in the
# weight gradient), float4 weight loads (C*R*S % 4 == 0) and scalar ones.
BIG_CASES = [
    (2, 8, 10, 10, 130, 1, 1, 1, 0),
    (3, 16, 12, 12, 70, 3, 3, 1, 1),
    (1, 64, 6, 6, 40, 3, 3, 1, 1),
    (4, 5, 17, 19, 33, 3, 3, 2, 1),
    (2, 3, 32, 32, 16, 3, 3, 1, 1),
]
CASES = CONV_CASES + BIG_CASES
IDS = CONV_IDS + ["big{}".format(i) for i in range(len(BIG_CASES))]


def inputs(case, seed):
    n, c, h, w, k, r, s, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c, r, s)) / np.sqrt(c * r * s)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    return x, wt, b, stride, padding


def tol(reduction):  # FP32 sums in a different order: error grows with the reduction length
    return dict(rtol=1e-4, atol=1e-5 * np.sqrt(reduction))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv_forward_and_backward_match_numpy(case):
    x, w, b, stride, padding = inputs(case, sum(case[:7]))
    for op in ("conv2d", "conv2d_relu"):
        assert_close(host(run(op, x, w, b, stride, padding)), ref(op, x, w, b, stride, padding),
                     **tol(w[0].size), name=op)
    y = ref("conv2d", x, w, b, stride, padding)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    got = run("conv2d_backward", dy, x, w, stride, padding)
    want = ref("conv2d_backward", dy, x, w, stride, padding)
    red = (w.shape[0] * w.shape[2] * w.shape[3], y.shape[0] * y.shape[2] * y.shape[3])
    assert_close(host(got[0]), want[0], **tol(red[0]), name="dx")
    assert_close(host(got[1]), want[1], **tol(red[1]), name="dw")
    assert_close(host(got[2]), want[2], **tol(red[1]), name="db")


def test_conv_without_bias_and_without_input_grad():
    x, w, _, stride, padding = inputs(CASES[1], 3)
    assert_close(host(run("conv2d", x, w, None, stride, padding)), ref("conv2d", x, w, None, stride, padding),
                 **tol(w[0].size))
    dy = np.random.default_rng(4).standard_normal(ref("conv2d", x, w).shape[:2] + (7, 6)).astype(np.float32)
    dx, dw, db = run("conv2d_backward", dy, x, w, stride, padding, input_grad=False)
    assert dx is None
    assert_close(host(dw), ref("conv2d_backward", dy, x, w, stride, padding)[1], **tol(dy[0, 0].size * 2))


@pytest.mark.parametrize("case", [CASES[1], BIG_CASES[3]])
def test_relu_mask_fused_into_the_data_gradient(case):
    """relu_mask: the conv's input came out of a ReLU; dx is zeroed where that input is <= 0."""
    x, w, b, stride, padding = inputs(case, 5)
    x = np.maximum(x, 0)  # what a ReLU hands on: exact zeros where it cut
    dy = np.random.default_rng(6).standard_normal(ref("conv2d", x, w, b, stride, padding).shape).astype(np.float32)
    from gpucnn.backends.cupy import conv
    with gpucnn.use_backend("cupy"):
        dx = conv.conv2d_backward(dy, x, w, *_resolved(x, w, stride, padding), relu_mask=True)[0]
    want = ref("conv2d_backward", dy, x, w, stride, padding)[0] * (x > 0)
    assert_close(host(dx), want, **tol(w.shape[0] * 9))
    assert np.all(host(dx)[x <= 0] == 0)


def _resolved(x, w, stride, padding):
    from gpucnn import shapes
    stride_hw, pads, _ = shapes.check_conv2d(x, w, None, stride, padding)
    return stride_hw, pads


def tf32(a):
    """Round to TF32 as cvt.rna.tf32.f32 does: nearest, ties away from zero, 10 mantissa bits."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("case", [CASES[1], BIG_CASES[1], BIG_CASES[3]], ids=["small", "big1", "big3"])
def test_tf32_mode_multiplies_tf32_rounded_inputs(case):
    """TF32 mode = products of TF32-rounded operands, summed in FP32: compare with that computed in
    float64 (tight), with the FP32 result (about 1e-3 relative), and check it is not the FP32 path."""
    x, w, b, stride, padding = inputs(case, 7)
    with gpucnn.config.tf32(True):
        got = host(run("conv2d", x, w, b, stride, padding))
    exact = ref("conv2d", x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, padding)
    rounded = ref("conv2d", tf32(x).astype(np.float64), tf32(w).astype(np.float64), b.astype(np.float64),
                  stride, padding)
    scale = ref("conv2d", np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, stride, padding)
    assert np.all(np.abs(got - rounded) <= 1e-6 * scale + 1e-6), "TF32 result is not the TF32-rounded product"
    assert np.all(np.abs(got - exact) <= 2e-3 * scale + 1e-6), "TF32 result too far from the exact one"
    fp32 = host(run("conv2d", x, w, b, stride, padding))
    assert np.max(np.abs(fp32 - exact)) < np.max(np.abs(got - exact)) / 10, "TF32 mode looks like FP32"
    dy = np.random.default_rng(8).standard_normal(got.shape).astype(np.float32)
    with gpucnn.config.tf32(True):
        g = run("conv2d_backward", dy, x, w, stride, padding)
    want = ref("conv2d_backward", dy, x, w, stride, padding)
    for name, a, e in zip(("dx", "dw", "db"), g, want):
        e = np.asarray(e)
        assert_close(host(a), e, rtol=0, atol=2e-3 * np.abs(e).max(), name=f"tf32 {name}")


def test_bad_inputs_are_refused_before_launch():
    x, w, b, stride, padding = inputs(CASES[1], 10)
    with pytest.raises(TypeError, match="float32"):
        run("conv2d", x.astype(np.float64), w.astype(np.float64), None, stride, padding)
    wide = device(np.zeros((w.shape[0], w.shape[1], w.shape[2], 2 * w.shape[3]), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        run("conv2d", x, wide[..., ::2], b, stride, padding)


# cifar10_vgg's and mnist_cnn's convolutions (3x3, 'same'), batch 8: too big for the emulator, run on a GPU.
ZOO_CONVS = [(8, 3, 32, 32, 32), (8, 32, 32, 32, 32), (8, 32, 16, 16, 64), (8, 64, 16, 16, 64),
             (8, 64, 8, 8, 128), (8, 128, 8, 8, 128), (8, 1, 28, 28, 32), (8, 32, 14, 14, 64), (8, 64, 7, 7, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,c,h,w,k", ZOO_CONVS)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
def test_zoo_convolutions_on_the_gpu(n, c, h, w, k, tf32):
    x, wt, b, _, _ = inputs((n, c, h, w, k, 3, 3, 1, 1), n + c + k)
    y_ref = ref("conv2d_relu", x, wt, b, 1, "same")
    dy = np.random.default_rng(k).standard_normal(y_ref.shape).astype(np.float32)
    want = ref("conv2d_backward", dy, x, wt, 1, "same")
    with gpucnn.config.tf32(tf32):
        y = host(run("conv2d_relu", x, wt, b, 1, "same"))
        got = run("conv2d_backward", dy, x, wt, 1, "same")
    for name, a, e, red in zip(("y", "dx", "dw", "db"), (y,) + tuple(host(g) for g in got), (y_ref,) + tuple(want),
                               (c * 9, k * 9, n * h * w, n * h * w)):
        e = np.asarray(e)
        if tf32:
            assert_close(a, e, rtol=0, atol=2e-3 * np.abs(e).max(), name=f"tf32 {name}")
        else:
            assert_close(a, e, **tol(red), name=name)
