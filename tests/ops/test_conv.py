"""The conv family (conv2d, conv2d_relu, conv2d_backward; kernels/conv.cu on gemm.cuh,
gpucnn/backends/*/conv.py) on every backend.

NumPy against the loop oracle of tests/oracle.py (float32 and float64, plus float64 central differences;
cases too big for the loops against a vectorized float64 reference, itself checked against the oracle),
Numba (simulator) and CuPy (emulator) against NumPy. Backend internals: numba's naive kernel, its
tile geometry and weight-gradient reduction; cupy's fused ReLU mask, TF32 mode and launcher refusals.
"""
import numpy as np
import pytest

import gpucnn
import oracle as O
from helpers import EMU, HOST, SIM, assert_close, check_grad, grid, on, ref

F32, F64 = np.float32, np.float64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
ORACLE_TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences


def tol(dtype, reduction):
    """The GPU backends against NumPy: FP32 sums in another order, the error growing with their length."""
    if dtype == F64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=1e-4, atol=1e-5 * np.sqrt(reduction))


def conv_id(c):
    return "x{}x{}x{}x{}_w{}x{}x{}_s{}_p{}".format(*c[:7], c[7], c[8]).replace(" ", "")


# (N, C, H, W, K, R, S, stride, padding): odd sizes, N=1, C=1, strides 1..3 (and 6, which shrinks numba's
# pixel tile), paddings 0..2, asymmetric strides and paddings, 'same' with even kernels (extra row/column
# at the bottom/right), 'valid', 1x1, 2x3, 3x3, 5x5 and 7x7 kernels (numba: chunked filter tiles), partial
# channel groups; cupy: several tiles in M and N, K > 128 filters, deep reductions (split-K in the weight
# gradient), float4 weight loads (C*R*S % 4 == 0) and scalar ones
CONV_CASES = {
    **{conv_id(c): (c, EMU) for c in (
        (1, 1, 5, 5, 1, 3, 3, 1, 0),
        (2, 3, 7, 6, 4, 3, 3, 1, 1),
        (2, 2, 8, 8, 3, 3, 3, 2, 0),
        (1, 2, 9, 7, 2, 3, 3, 3, 2),
        (1, 1, 8, 8, 1, 3, 3, 3, 0),          # stride leaves rows/cols unused: their dx must be 0
        (1, 1, 5, 5, 1, 3, 3, 3, 2),
        (1, 1, 4, 4, 1, 3, 3, 2, 2),
        (1, 1, 3, 3, 1, 3, 3, 1, 2),          # corner windows see one real pixel
        (2, 1, 6, 5, 2, 1, 1, 1, 0),          # 1x1
        (1, 3, 5, 7, 2, 1, 1, 2, 0),          # 1x1 stride 2
        (1, 2, 4, 4, 2, 1, 1, 1, 2),          # outputs entirely in the padding (= bias)
        (2, 2, 6, 7, 3, 2, 3, 1, 0),          # 2x3
        (1, 2, 5, 6, 2, 2, 3, 2, 1),          # 2x3 stride 2
        (2, 2, 9, 9, 2, 5, 5, 1, 2),          # 5x5
        (1, 1, 11, 10, 2, 5, 5, 2, 1),
        (1, 1, 3, 3, 1, 5, 5, 1, 1),          # kernel larger than input, fits the padded one
        (1, 2, 7, 8, 2, 2, 3, (2, 1), (1, 0)),  # asymmetric stride and padding
        (2, 2, 7, 7, 3, 3, 3, (1, 2), (2, 1)),
        (1, 2, 10, 4, 2, 3, 2, (3, 1), (0, 1)),
        (1, 1, 1, 1, 2, 1, 1, 1, 0),          # single pixel
        (1, 2, 6, 6, 2, 3, 3, 1, "same"),
        (1, 2, 5, 7, 2, 5, 5, 1, "same"),
        (1, 2, 7, 6, 2, 2, 2, 1, "same"),     # even kernel: extra row/col at bottom/right
        (2, 1, 5, 6, 3, 2, 3, 1, "same"),
        (1, 2, 6, 7, 2, 4, 5, 1, "same"),
        (1, 1, 4, 5, 1, 1, 4, 1, "same"),
        (1, 2, 5, 5, 2, 3, 3, 1, "valid"),
        (1, 1, 7, 6, 2, 2, 3, 2, "valid"),
    )},
    "1x1_C1": ((1, 1, 5, 5, 2, 1, 1, 1, 0), SIM),
    "3x3_pad1_N2": ((2, 3, 7, 6, 5, 3, 3, 1, 1), SIM),
    "2x3_stride2x1_pad2x1": ((1, 2, 7, 9, 3, 2, 3, (2, 1), (2, 1)), SIM, {"numba": (F32, F64)}),
    "5x5_pad2": ((1, 2, 6, 7, 3, 5, 5, 1, 2), SIM),
    "same_2x2": ((1, 2, 5, 6, 3, 2, 2, 1, "same"), SIM),
    "same_4x2_C1": ((1, 1, 7, 5, 2, 4, 2, 1, "same"), SIM),
    "3x3_stride2_C5_K5": ((2, 5, 5, 5, 5, 3, 3, 2, 1), SIM),
    "7x7_stride3_chunked": ((1, 2, 9, 9, 3, 7, 7, 3, 1), SIM),
    "3x3_stride6x1_small_tile": ((1, 2, 19, 6, 2, 3, 3, (6, 1), 0), SIM),
    "big0": ((2, 8, 10, 10, 130, 1, 1, 1, 0), EMU),
    "big1": ((3, 16, 12, 12, 70, 3, 3, 1, 1), EMU),
    "big2": ((1, 64, 6, 6, 40, 3, 3, 1, 1), EMU),
    "big3": ((4, 5, 17, 19, 33, 3, 3, 2, 1), EMU),
    "big4": ((2, 3, 32, 32, 16, 3, 3, 1, 1), EMU),
}
BIG = {cid for cid in CONV_CASES if cid.startswith("big")}  # too big for the loop oracle: the vectorized one
SIM_IDS = [cid for cid, (_, be, *_) in CONV_CASES.items() if be == SIM]
NO_INPUT_GRAD = [*list(CONV_CASES)[:6], "2x3_stride2x1_pad2x1"]
DEVICE_INPUTS = "same_4x2_C1"  # GPU backends: device inputs (the others host arrays)


def only(backends, ids):
    return {cid: (CONV_CASES[cid][0], backends, *CONV_CASES[cid][2:]) for cid in ids}


def inputs(case, dtype, seed=0):
    n, c, h, w, k, r, s, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, r, s)) / np.sqrt(c * r * s)
    b = rng.standard_normal(k)
    return x.astype(dtype), wt.astype(dtype), b.astype(dtype), stride, padding


def geometry(case, x, w):
    """(stride pair, (top, bottom, left, right) pads) as the oracle takes them."""
    stride, padding = case[7], case[8]
    return ((stride, stride) if isinstance(stride, int) else tuple(stride)), O.resolve_pads(padding, *w.shape[2:])


# --------------------------------------------------------------------------- the vectorized float64 reference

def _windows(x, r, s, stride, pads):
    t, b_, l, rr = pads
    xp = np.pad(np.asarray(x, F64), ((0, 0), (0, 0), (t, b_), (l, rr)))
    return xp, np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))[:, :, ::stride[0], ::stride[1]]


def fast_conv2d(x, w, b, stride, pads):
    """oracle.conv2d, vectorized (sliding windows and einsum), float64."""
    _, win = _windows(x, *w.shape[2:], stride, pads)
    y = np.einsum("ncpqij,kcij->nkpq", win, np.asarray(w, F64))
    return y if b is None else y + np.asarray(b, F64)[:, None, None]


def fast_conv2d_backward(dy, x, w, stride, pads):
    """oracle.conv2d_backward, vectorized, float64."""
    r, s = w.shape[2:]
    dy, w = np.asarray(dy, F64), np.asarray(w, F64)
    xp, win = _windows(x, r, s, stride, pads)
    p, q = dy.shape[2:]
    dxp = np.zeros_like(xp)
    for i in range(r):
        for j in range(s):
            dxp[:, :, i:i + stride[0] * p:stride[0], j:j + stride[1] * q:stride[1]] += \
                np.einsum("nkpq,kc->ncpq", dy, w[:, :, i, j])
    t, _, l, _ = pads
    dx = dxp[:, :, t:t + x.shape[2], l:l + x.shape[3]]
    return dx, np.einsum("ncpqij,nkpq->kcij", win, dy), dy.sum(axis=(0, 2, 3))


def oracle_conv2d(cid, *args):
    return (fast_conv2d if cid in BIG else O.conv2d)(*args)


def oracle_conv2d_backward(cid, *args):
    return (fast_conv2d_backward if cid in BIG else O.conv2d_backward)(*args)


@pytest.mark.parametrize("cid", [cid for cid in CONV_CASES if cid not in BIG])
def test_vectorized_reference_matches_the_oracle(cid):
    case = CONV_CASES[cid][0]
    x, w, b, _, _ = inputs(case, F64, 2)
    stride, pads = geometry(case, x, w)
    y = O.conv2d(x, w, b, stride, pads)
    assert_close(fast_conv2d(x, w, b, stride, pads), y, rtol=1e-12, atol=1e-12, name="y")
    dy = np.random.default_rng(3).standard_normal(y.shape)
    for got, want, name in zip(fast_conv2d_backward(dy, x, w, stride, pads), O.conv2d_backward(dy, x, w, stride, pads),
                               ("dx", "dw", "db")):
        assert_close(got, want, rtol=1e-12, atol=1e-12, name=name)


# --------------------------------------------------------------------------- every backend

def cid_of(case):
    return next(cid for cid, (c, *_) in CONV_CASES.items() if c == case)


@pytest.mark.parametrize("be,case,dtype", grid(CONV_CASES, DTYPES))
def test_conv2d_forward(be, case, dtype):
    cid = cid_of(case)
    x, w, b, stride_arg, padding_arg = inputs(case, dtype)
    stride, pads = geometry(case, x, w)
    put = be.device if cid == DEVICE_INPUTS else (lambda a: a)
    if be.reference:
        want = oracle_conv2d(cid, x, w, b, stride, pads)
        want_nobias = want - b[:, None, None].astype(F64)
        t = ORACLE_TOL[dtype]
    else:
        want, want_nobias = ref("conv2d", x, w, b, stride_arg, padding_arg), ref("conv2d", x, w, None, stride_arg,
                                                                                 padding_arg)
        t = tol(dtype, w[0].size)
    for op, bias, e in (("conv2d", b, want), ("conv2d", None, want_nobias), ("conv2d_relu", b, np.maximum(want, 0))):
        y = be.host(be.run(op, put(x), put(w), None if bias is None else put(bias), stride=stride_arg,
                           padding=padding_arg))
        assert y.dtype == dtype and y.shape == e.shape
        assert_close(y, e, **t, name=op + (" without bias" if bias is None else ""))


@pytest.mark.parametrize("be,case,dtype", grid(CONV_CASES, DTYPES))
def test_conv2d_backward(be, case, dtype):
    cid = cid_of(case)
    x, w, b, stride_arg, padding_arg = inputs(case, dtype, seed=4)
    stride, pads = geometry(case, x, w)
    out_shape = fast_conv2d(x, w, None, stride, pads).shape
    dy = np.random.default_rng(5).standard_normal(out_shape).astype(dtype)
    put = be.device if cid == DEVICE_INPUTS else (lambda a: a)
    got = be.run("conv2d_backward", put(dy), put(x), put(w), stride=stride_arg, padding=padding_arg)
    if be.reference:
        want = oracle_conv2d_backward(cid, dy, x, w, stride, pads)
        tols = [ORACLE_TOL[dtype]] * 3
    else:
        want = ref("conv2d_backward", dy, x, w, stride_arg, padding_arg)
        red_dx, red_dw = w.shape[0] * w.shape[2] * w.shape[3], out_shape[0] * out_shape[2] * out_shape[3]
        tols = [tol(dtype, red_dx), tol(dtype, red_dw), tol(dtype, red_dw)]
    for g, e, t, name, shape in zip(got, want, tols, ("dx", "dw", "db"), (x.shape, w.shape, b.shape)):
        g = be.host(g)
        assert g.dtype == dtype and g.shape == shape, name
        assert_close(g, e, **t, name=name)


@pytest.mark.parametrize("be,case,dtype", grid(only(EMU, NO_INPUT_GRAD[:-1]) | only(SIM, NO_INPUT_GRAD[-1:]), DTYPES))
def test_conv2d_backward_without_input_grad(be, case, dtype):
    x, w, b, stride, padding = inputs(case, dtype, seed=6)
    dy = np.random.default_rng(7).standard_normal(ref("conv2d", x, w, b, stride, padding).shape).astype(dtype)
    _, dw, db = ref("conv2d_backward", dy, x, w, stride, padding)
    dx0, dw0, db0 = be.run("conv2d_backward", dy, x, w, stride, padding, input_grad=False)
    assert dx0 is None
    red = dy[:, 0].size
    assert_close(be.host(dw0), dw, **({"rtol": 0, "atol": 0} if be.reference else tol(dtype, red)), name="dw")
    assert_close(be.host(db0), db, **({"rtol": 0, "atol": 0} if be.reference else tol(dtype, red)), name="db")


@pytest.mark.parametrize("be,case", grid({cid: (c, HOST) for cid, (c, *_) in CONV_CASES.items() if cid not in BIG}))
def test_conv2d_grad_fd(be, case):
    x, w, b, st, pad = inputs(case, F64, seed=1)
    dy = np.random.default_rng(1).standard_normal(be.run("conv2d", x, w, b, st, pad).shape)
    dx, dw, db = be.run("conv2d_backward", dy, x, w, stride=st, padding=pad)
    conv = lambda x_, w_, b_: be.run("conv2d", x_, w_, b_, stride=st, padding=pad)
    check_grad(conv, [x, w, b], 0, dx, dy, **GRAD, name="dx")
    check_grad(conv, [x, w, b], 1, dw, dy, **GRAD, name="dw")
    check_grad(conv, [x, w, b], 2, db, dy, **GRAD, name="db")


# N, C, H, W, K, R, S, stride, padding: big enough that a backend may split the batch into chunks
@pytest.mark.parametrize("case", [(14, 16, 32, 32, 8, 3, 3, 1, 1), (7, 16, 64, 63, 4, 3, 3, 2, 1),
                                  (7, 3, 64, 64, 4, 5, 5, 1, 2)], ids=conv_id)
@pytest.mark.parametrize("be", on("numpy"))
def test_conv2d_big_batch_equals_per_sample(be, case):
    """Whole-batch results equal the per-sample ones (each a single tiny, oracle-checked case)."""
    x, w, b, st, pad = inputs(case, F64, seed=3)
    y = be.run("conv2d", x, w, b, st, pad)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, dw, db = be.run("conv2d_backward", dy, x, w, st, pad)
    per = [be.run("conv2d_backward", dy[i:i + 1], x[i:i + 1], w, st, pad) for i in range(len(x))]
    assert_close(y, np.concatenate([be.run("conv2d", x[i:i + 1], w, b, st, pad) for i in range(len(x))]),
                 **ORACLE_TOL[F64], name="y")
    assert_close(dx, np.concatenate([g[0] for g in per]), **ORACLE_TOL[F64], name="dx")
    assert_close(dw, sum(g[1] for g in per), rtol=1e-10, atol=1e-9, name="dw")
    assert_close(db, sum(g[2] for g in per), rtol=1e-10, atol=1e-9, name="db")


@pytest.mark.parametrize("h,w,r,s", [(5, 5, 3, 3), (6, 7, 2, 2), (4, 6, 4, 3), (7, 4, 5, 1), (3, 3, 6, 6), (1, 8, 1, 5)])
@pytest.mark.parametrize("be", on("numpy"))
def test_same_padding_keeps_size(be, h, w, r, s):
    rng = np.random.default_rng(2)
    x, wt = rng.standard_normal((2, 3, h, w)).astype(F32), rng.standard_normal((4, 3, r, s)).astype(F32)
    y = be.run("conv2d", x, wt, padding="same")
    assert y.shape == (2, 4, h, w)
    assert_close(y, O.conv2d(x, wt, None, (1, 1), O.same_pads(r, s)), **ORACLE_TOL[F32])


@pytest.mark.parametrize("be", on("numpy"))
def test_valid_padding_is_zero_padding(be):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 7, 6)), rng.standard_normal((3, 2, 3, 2))
    assert_close(be.run("conv2d", x, w, padding="valid"), be.run("conv2d", x, w, padding=0), rtol=0, atol=0)
    assert be.run("conv2d", x, w, padding="valid").shape == (1, 3, 5, 5)


# --------------------------------------------------------------------------- numba: naive kernel, geometry, reduction

def numba_conv():
    from gpucnn.backends.numba import conv
    return conv


def resolved(case, x, w, b=None):
    from gpucnn import shapes
    return shapes.check_conv2d(x, w, b, case[7], case[8])  # (stride pair, pads, out_shape)


@pytest.mark.parametrize("be,case,dtype", grid(only(("numba",), SIM_IDS), DTYPES))
def test_numba_naive_conv2d(be, case, dtype):
    """The naive (thread-per-output) kernel, plain and with the fused ReLU, against NumPy."""
    x, w, b, st, pad = inputs(case, dtype, seed=1)
    args = (x, w, b, *resolved(case, x, w, b))
    for relu in (False, True):
        got = be.host(numba_conv().conv2d_naive(*args, relu=relu))
        want = ref("conv2d_relu" if relu else "conv2d", x, w, b, st, pad)
        assert_close(got, want, **tol(dtype, w[0].size), name=f"naive relu={relu}")


@pytest.mark.parametrize("cid", SIM_IDS)
def test_numba_tiled_geometry_fits_shared_tiles(cid):
    conv = pytest.importorskip("gpucnn.backends.numba.conv")
    case = CONV_CASES[cid][0]
    x, w, _, _, _ = inputs(case, F32)
    stride, _, out_shape = resolved(case, x, w)
    grid_, block, k_groups, rt, st = conv._geometry_fwd(out_shape, w.shape, stride)
    tw, th, tk = block
    n, k, p, q = out_shape
    assert 1 <= tw <= conv.TILE_Q and 1 <= th <= conv.TILE_P and 1 <= tk <= conv.TILE_K
    assert 1 <= rt <= conv.SMEM_F and 1 <= st <= conv.SMEM_F
    assert (th - 1) * stride[0] + rt <= conv.SMEM_IN and (tw - 1) * stride[1] + st <= conv.SMEM_IN
    assert grid_ == (n * k_groups, -(-p // th), -(-q // tw)) and k_groups * tk >= k
    assert tw * th * tk * grid_[0] * grid_[1] * grid_[2] <= 1100  # simulator-sized launches


@pytest.mark.parametrize("be", on("numba"))
def test_numba_weight_grad_reduction_uses_many_threads_and_tap_chunks(be):
    """N*P*Q large enough for a full RED_THREADS block and a 5x5 filter (25 taps: 3 DW_TAPS chunks)."""
    conv = numba_conv()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 1, 16, 17)).astype(F32)
    w = rng.standard_normal((1, 1, 5, 5)).astype(F32)
    stride, pads, out_shape = resolved((0,) * 7 + (1, 2), x, w)
    assert out_shape[0] * out_shape[2] * out_shape[3] >= conv.RED_THREADS * conv.RED_MIN_ITEMS
    dy = rng.standard_normal(out_shape).astype(F32)
    _, rdw, rdb = ref("conv2d_backward", dy, x, w, 1, 2, input_grad=False)
    _, dw, db = conv.conv2d_backward(dy, x, w, stride, pads, input_grad=False)
    assert_close(be.host(dw), rdw, rtol=1e-4, atol=1e-4, name="dw")
    assert_close(be.host(db), rdb, rtol=1e-4, atol=1e-4, name="db")


# --------------------------------------------------------------------------- cupy: ReLU mask, TF32, refusals, GPU

@pytest.mark.parametrize("cid", ["x2x3x7x6_w4x3x3_s1_p1", "big3"])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_relu_mask_fused_into_the_data_gradient(be, cid):
    """relu_mask: the conv's input came out of a ReLU; dx is zeroed where that input is <= 0."""
    from gpucnn.backends.cupy import conv
    case = CONV_CASES[cid][0]
    x, w, b, stride, padding = inputs(case, F32, 5)
    x = np.maximum(x, 0)  # what a ReLU hands on: exact zeros where it cut
    dy = np.random.default_rng(6).standard_normal(ref("conv2d", x, w, b, stride, padding).shape).astype(F32)
    with gpucnn.use_backend("cupy"):
        dx = conv.conv2d_backward(dy, x, w, *resolved(case, x, w)[:2], relu_mask=True)[0]
    want = ref("conv2d_backward", dy, x, w, stride, padding)[0] * (x > 0)
    assert_close(be.host(dx), want, **tol(F32, w.shape[0] * 9))
    assert np.all(be.host(dx)[x <= 0] == 0)


# Which kernels a shape takes on the cupy backend, each checked against NumPy (forward with bias + ReLU,
# all three gradients, dx with the fused ReLU mask) on fresh inputs: the direct first-layer kernels, the
# tap-ordered gathers (C and K multiples of 16) and the general ones, split-K forward and data gradient
# (the emulator reports 4 SMs, so a one-tile GEMM with a long K is split) with the split epilogue.
PATHS = {
    "direct_3x3_rgb": ((3, 3, 19, 37, 20, 3, 3, 1, 1), ("conv2d_fwd_direct<3>", "conv2d_wgrad_direct<3>")),
    "direct_3x3_grey": ((3, 1, 28, 28, 32, 3, 3, 1, 1), ("conv2d_fwd_direct<3>", "conv2d_wgrad_direct<3>")),
    "general_5x5_grey": ((2, 1, 13, 9, 12, 5, 5, 1, 2), ("conv2d_fwd<*, false>", "conv2d_wgrad<*, false>")),
    "taps": ((2, 16, 6, 7, 32, 3, 3, 1, 1), ("conv2d_fwd<*, true>", "conv2d_dgrad<*, true>", "conv2d_wgrad<*, true>")),
    "general_stride2": ((2, 16, 9, 8, 16, 3, 3, 2, 1), ("conv2d_fwd<*, true>", "conv2d_dgrad<*, false>")),
    "general_c5": ((2, 5, 7, 6, 9, 3, 3, 1, 1), ("conv2d_fwd<*, false>", "conv2d_wgrad<*, false>")),
    "split_k": ((1, 64, 4, 4, 16, 3, 3, 1, 1), ("conv2d_fwd<*, true>", "splitk_epilogue", "conv2d_dgrad<*, true>")),
    "split_k_dgrad": ((1, 16, 4, 4, 64, 3, 3, 1, 1), ("conv2d_dgrad<*, true>", "splitk_epilogue")),
}


def _took(names, pattern):
    head, _, tail = pattern.partition("*")
    return any(n.startswith(head) and n.endswith(tail) for n in names)


@pytest.mark.parametrize("cid", list(PATHS))
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_kernel_paths_match_numpy(be, cid, monkeypatch):
    from gpucnn.backends.cupy import _runtime as rt
    from gpucnn.backends.cupy import conv
    case, expected = PATHS[cid]
    names = []
    launch = rt.Family.launch
    monkeypatch.setattr(rt.Family, "launch", lambda self, name, *a: (names.append(name), launch(self, name, *a))[1])
    x, w, b, stride, padding = inputs(case, F32, seed=11)
    x = np.maximum(x, 0) * (np.random.default_rng(12).random(x.shape) < 0.8)  # a ReLU's output: exact zeros
    st, pads, out_shape = resolved(case, x, w, b)
    dy = np.random.default_rng(13).standard_normal(out_shape).astype(F32)
    with gpucnn.use_backend("cupy"):
        y = conv.conv2d_relu(x, w, b, st, pads, out_shape)
        dx, dw, db = conv.conv2d_backward(dy, x, w, st, pads, relu_mask=True)
    want_y = np.maximum(ref("conv2d", x, w, b, stride, padding), 0)
    rdx, rdw, rdb = ref("conv2d_backward", dy, x, w, stride, padding)
    k = w[0].size
    assert_close(be.host(y), want_y, **tol(F32, k), name="y")
    assert_close(be.host(dx), rdx * (x > 0), **tol(F32, w.shape[0] * case[5] * case[6]), name="dx")
    assert_close(be.host(dw), rdw, **tol(F32, dy[:, 0].size), name="dw")
    assert_close(be.host(db), rdb, **tol(F32, dy[:, 0].size), name="db")
    missing = [e for e in expected if not _took(names, e)]
    assert not missing, f"{cid} took {names}, not {missing}"
    if cid == "split_k_dgrad":  # the data gradient itself split: its partials reduced with the mask applied
        assert names[-1] == "splitk_epilogue" and names[-2].startswith("conv2d_dgrad<"), names


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_tf32_first_layer_keeps_the_tensor_core_gemm(be, monkeypatch):
    """The direct kernels are exact FP32: in TF32 mode a first layer runs the GEMM on tensor cores."""
    from gpucnn.backends.cupy import _runtime as rt
    names = []
    launch = rt.Family.launch
    monkeypatch.setattr(rt.Family, "launch", lambda self, name, *a: (names.append(name), launch(self, name, *a))[1])
    x, w, b, stride, padding = inputs(PATHS["direct_3x3_rgb"][0], F32, seed=3)
    with gpucnn.config.tf32(True):
        be.run("conv2d", x, w, b, stride, padding)
    assert not any("direct" in n for n in names) and _took(names, "conv2d_fwd<*, true, false>"), names


def tf32(a):
    """Round to TF32 as cvt.rna.tf32.f32 does: nearest, ties away from zero, 10 mantissa bits."""
    u = np.ascontiguousarray(a, F32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(F32)


@pytest.mark.parametrize("cid", ["x2x3x7x6_w4x3x3_s1_p1", "big1", "big3"])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_tf32_mode_multiplies_tf32_rounded_inputs(be, cid):
    """TF32 mode = products of TF32-rounded operands, summed in FP32: compare with that computed in
    float64 (tight), with the FP32 result (about 1e-3 relative), and check it is not the FP32 path."""
    x, w, b, stride, padding = inputs(CONV_CASES[cid][0], F32, 7)
    with gpucnn.config.tf32(True):
        got = be.host(be.run("conv2d", x, w, b, stride, padding))
    exact = ref("conv2d", x.astype(F64), w.astype(F64), b.astype(F64), stride, padding)
    rounded = ref("conv2d", tf32(x).astype(F64), tf32(w).astype(F64), b.astype(F64), stride, padding)
    scale = ref("conv2d", np.abs(x).astype(F64), np.abs(w).astype(F64), None, stride, padding)
    assert np.all(np.abs(got - rounded) <= 1e-6 * scale + 1e-6), "TF32 result is not the TF32-rounded product"
    assert np.all(np.abs(got - exact) <= 2e-3 * scale + 1e-6), "TF32 result too far from the exact one"
    fp32 = be.host(be.run("conv2d", x, w, b, stride, padding))
    assert np.max(np.abs(fp32 - exact)) < np.max(np.abs(got - exact)) / 10, "TF32 mode looks like FP32"
    dy = np.random.default_rng(8).standard_normal(got.shape).astype(F32)
    with gpucnn.config.tf32(True):
        g = be.run("conv2d_backward", dy, x, w, stride, padding)
    want = ref("conv2d_backward", dy, x, w, stride, padding)
    for name, a, e in zip(("dx", "dw", "db"), g, want):
        e = np.asarray(e)
        assert_close(be.host(a), e, rtol=0, atol=2e-3 * np.abs(e).max(), name=f"tf32 {name}")


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_conv_refuses_bad_inputs_before_launch(be):
    x, w, b, stride, padding = inputs(CONV_CASES["x2x3x7x6_w4x3x3_s1_p1"][0], F32, 10)
    with pytest.raises(TypeError, match="float32"):
        be.run("conv2d", x.astype(F64), w.astype(F64), None, stride, padding)
    wide = be.device(np.zeros((w.shape[0], w.shape[1], w.shape[2], 2 * w.shape[3]), F32))
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("conv2d", x, wide[..., ::2], b, stride, padding)


# cifar10_vgg's and mnist_cnn's convolutions (3x3, 'same'), batch 8: too big for the emulator, run on a GPU.
ZOO_CONVS = [(8, 3, 32, 32, 32), (8, 32, 32, 32, 32), (8, 32, 16, 16, 64), (8, 64, 16, 16, 64),
             (8, 64, 8, 8, 128), (8, 128, 8, 8, 128), (8, 1, 28, 28, 32), (8, 32, 14, 14, 64), (8, 64, 7, 7, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,c,h,w,k", ZOO_CONVS)
@pytest.mark.parametrize("tf32_mode", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_zoo_convolutions_on_the_gpu(be, n, c, h, w, k, tf32_mode):
    x, wt, b, _, _ = inputs((n, c, h, w, k, 3, 3, 1, 1), F32, n + c + k)
    y_ref = ref("conv2d_relu", x, wt, b, 1, "same")
    dy = np.random.default_rng(k).standard_normal(y_ref.shape).astype(F32)
    want = ref("conv2d_backward", dy, x, wt, 1, "same")
    with gpucnn.config.tf32(tf32_mode):
        y = be.host(be.run("conv2d_relu", x, wt, b, 1, "same"))
        got = be.run("conv2d_backward", dy, x, wt, 1, "same")
    for name, a, e, red in zip(("y", "dx", "dw", "db"), (y,) + tuple(be.host(g) for g in got),
                               (y_ref,) + tuple(want), (c * 9, k * 9, n * h * w, n * h * w)):
        e = np.asarray(e)
        if tf32_mode:
            assert_close(a, e, rtol=0, atol=2e-3 * np.abs(e).max(), name=f"tf32 {name}")
        else:
            assert_close(a, e, **tol(F32, red), name=name)
