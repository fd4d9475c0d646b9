"""gpucnn.functional on the NumPy backend against the naive oracle (tests/oracle.py) and central differences."""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend

import oracle as O
from helpers import assert_close, check_grad

F32, F64 = np.float32, np.float64
DTYPES = [F32, F64]
# forward/backward against the float64 oracle: float32 loosely, float64 tightly
TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences


def rand(rng, shape, dtype=F64, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ============================================================================= conv2d
# N, C, H, W, K, R, S, stride, padding
CONV_CASES = [
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
]
CONV_IDS = ["x{}x{}x{}x{}_w{}x{}x{}_s{}_p{}".format(*c[:7], c[7], c[8]) for c in CONV_CASES]


def conv_data(case, dtype, seed=0):
    n, c, h, w, k, r, s, stride, padding = case
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, (n, c, h, w), dtype), rand(rng, (k, c, r, s), dtype), rand(rng, (k,), dtype)
    return x, wt, b, pair(stride), O.resolve_pads(padding, r, s), rng


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_forward(case, dtype):
    x, w, b, stride, pads, _ = conv_data(case, dtype)
    stride_arg, padding_arg = case[7], case[8]
    ref = O.conv2d(x, w, b, stride, pads)
    y = F.conv2d(x, w, b, stride=stride_arg, padding=padding_arg)
    assert y.dtype == dtype and y.shape == ref.shape
    assert_close(y, ref, **TOL[dtype], name="conv2d")
    y0 = F.conv2d(x, w, stride=stride_arg, padding=padding_arg)  # no bias
    assert_close(y0 + b[:, None, None].astype(F64), ref, **TOL[dtype], name="conv2d no bias")
    yr = F.conv2d_relu(x, w, b, stride=stride_arg, padding=padding_arg)
    assert yr.dtype == dtype
    assert_close(yr, np.maximum(ref, 0), **TOL[dtype], name="conv2d_relu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_backward(case, dtype):
    x, w, b, stride, pads, rng = conv_data(case, dtype)
    dy = rand(rng, O.conv2d(x, w, b, stride, pads).shape, dtype)
    rdx, rdw, rdb = O.conv2d_backward(dy, x, w, stride, pads)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride=case[7], padding=case[8])
    for got, ref, name in ((dx, rdx, "dx"), (dw, rdw, "dw"), (db, rdb, "db")):
        assert got.dtype == dtype, name
        assert_close(got, ref, **TOL[dtype], name=name)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_grad_fd(case):
    x, w, b, stride, pads, rng = conv_data(case, F64, seed=1)
    st, pad = case[7], case[8]
    dy = rand(rng, F.conv2d(x, w, b, st, pad).shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride=st, padding=pad)
    conv = lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=st, padding=pad)
    check_grad(conv, [x, w, b], 0, dx, dy, **GRAD, name="dx")
    check_grad(conv, [x, w, b], 1, dw, dy, **GRAD, name="dw")
    check_grad(conv, [x, w, b], 2, db, dy, **GRAD, name="db")


# N, C, H, W, K, R, S, stride, padding: big enough that a backend may split the batch into chunks
@pytest.mark.parametrize("case", [(14, 16, 32, 32, 8, 3, 3, 1, 1), (7, 16, 64, 63, 4, 3, 3, 2, 1), (7, 3, 64, 64, 4, 5, 5, 1, 2)])
def test_conv2d_big_batch_equals_per_sample(case):
    """Whole-batch results equal the per-sample ones (each a single tiny, oracle-checked case)."""
    x, w, b, _, _, rng = conv_data(case, F64, seed=3)
    st, pad = case[7], case[8]
    y = F.conv2d(x, w, b, st, pad)
    dy = rand(rng, y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, st, pad)
    per = [F.conv2d_backward(dy[i:i + 1], x[i:i + 1], w, st, pad) for i in range(len(x))]
    assert_close(y, np.concatenate([F.conv2d(x[i:i + 1], w, b, st, pad) for i in range(len(x))]), **TOL[F64], name="y")
    assert_close(dx, np.concatenate([g[0] for g in per]), **TOL[F64], name="dx")
    assert_close(dw, sum(g[1] for g in per), rtol=1e-10, atol=1e-9, name="dw")
    assert_close(db, sum(g[2] for g in per), rtol=1e-10, atol=1e-9, name="db")


@pytest.mark.parametrize("case", CONV_CASES[:6], ids=CONV_IDS[:6])
def test_conv2d_backward_without_input_grad(case):
    x, w, b, stride, pads, rng = conv_data(case, F32)
    dy = rand(rng, F.conv2d(x, w, b, case[7], case[8]).shape, F32)
    _, dw, db = F.conv2d_backward(dy, x, w, stride=case[7], padding=case[8])
    dx0, dw0, db0 = F.conv2d_backward(dy, x, w, stride=case[7], padding=case[8], input_grad=False)
    assert dx0 is None
    assert_close(dw0, dw, rtol=0, atol=0, name="dw")
    assert_close(db0, db, rtol=0, atol=0, name="db")


@pytest.mark.parametrize("h,w,r,s", [(5, 5, 3, 3), (6, 7, 2, 2), (4, 6, 4, 3), (7, 4, 5, 1), (3, 3, 6, 6), (1, 8, 1, 5)])
def test_same_padding_keeps_size(h, w, r, s):
    rng = np.random.default_rng(2)
    x, wt = rand(rng, (2, 3, h, w), F32), rand(rng, (4, 3, r, s), F32)
    y = F.conv2d(x, wt, padding="same")
    assert y.shape == (2, 4, h, w)
    assert_close(y, O.conv2d(x, wt, None, (1, 1), O.same_pads(r, s)), **TOL[F32])


def test_valid_padding_is_zero_padding():
    rng = np.random.default_rng(3)
    x, w = rand(rng, (1, 2, 7, 6)), rand(rng, (3, 2, 3, 2))
    assert_close(F.conv2d(x, w, padding="valid"), F.conv2d(x, w, padding=0), rtol=0, atol=0)
    assert F.conv2d(x, w, padding="valid").shape == (1, 3, 5, 5)


# ============================================================================= arrays, dtypes, no mutation

@pytest.mark.parametrize("dtype", DTYPES)
def test_asarray_to_numpy_round_trip(dtype):
    x = np.random.default_rng(29).standard_normal((2, 3, 4, 5)).astype(dtype)
    a = F.asarray(x)
    back = F.to_numpy(a)
    assert isinstance(back, np.ndarray) and back.dtype == dtype
    np.testing.assert_array_equal(back, x)
    t = F.asarray(x.transpose(0, 1, 3, 2))  # non-contiguous in, contiguous out
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(F.to_numpy(t), x.transpose(0, 1, 3, 2))
    z = F.zeros_like(a)
    assert z.shape == x.shape and z.dtype == dtype and not np.any(z)


def _ops_f32():
    rng = np.random.default_rng(30)
    r = lambda *s: rand(rng, s, F32)
    x, w, b, dy6 = r(2, 3, 6, 6), r(4, 3, 3, 3), r(4), r(2, 4, 6, 6)
    xl, wl, bl, dyl = r(3, 5), r(2, 5), r(2), r(3, 2)
    mask = F.dropout(x, 0.5, seed=1)[1]
    return [
        ("conv2d", lambda: F.conv2d(x, w, b, padding=1)),
        ("conv2d_relu", lambda: F.conv2d_relu(x, w, b, padding=1)),
        ("conv2d_backward", lambda: F.conv2d_backward(dy6, x, w, padding=1)),
        ("max_pool2d", lambda: F.max_pool2d(x, 2, return_indices=True)[0]),
        ("max_pool2d_backward", lambda: F.max_pool2d_backward(r(2, 3, 3, 3), x, 2)),
        ("avg_pool2d", lambda: F.avg_pool2d(x, 2)),
        ("avg_pool2d_backward", lambda: F.avg_pool2d_backward(r(2, 3, 3, 3), x, 2)),
        ("relu", lambda: F.relu(x)),
        ("relu_backward", lambda: F.relu_backward(x, x)),
        ("upsample", lambda: F.upsample_nearest2d(x, 2)),
        ("upsample_backward", lambda: F.upsample_nearest2d_backward(x, 2)),
        ("add", lambda: F.add(x, x)),
        ("concat", lambda: F.concat([x, x])),
        ("concat_backward", lambda: F.concat_backward(x, [1, 2])),
        ("linear", lambda: F.linear(xl, wl, bl)),
        ("linear_backward", lambda: F.linear_backward(dyl, xl, wl)),
        ("softmax", lambda: F.softmax(xl)),
        ("log_softmax", lambda: F.log_softmax(xl)),
        ("softmax_backward", lambda: F.softmax_backward(xl, F.softmax(xl))),
        ("softmax_cross_entropy", lambda: F.softmax_cross_entropy(xl, np.array([0, 1, 4]))),
        ("dropout", lambda: F.dropout(x, 0.5, seed=1)),
        ("dropout_backward", lambda: F.dropout_backward(x, mask)),
        ("batch_norm", lambda: F.batch_norm(x, None, None, r(3), r(3), training=True)),
        ("batch_norm_eval", lambda: F.batch_norm(x, r(3), np.ones(3, F32), r(3), r(3), training=False)),
        ("batch_norm_backward", lambda: F.batch_norm_backward(x, x, r(3), r(3), np.ones(3, F32))),
    ], [x, w, b, dy6, xl, wl, bl, dyl, mask]


OPS_F32, INPUTS_F32 = _ops_f32()


@pytest.mark.parametrize("name,call", OPS_F32, ids=[name for name, _ in OPS_F32])
def test_float32_in_float32_out_inputs_untouched(name, call):
    before = [a.copy() for a in INPUTS_F32]
    out = call()
    outs = out if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        if o is not None:
            assert o.dtype == F32, f"{name} returned {o.dtype}"
    for a, a0 in zip(INPUTS_F32, before):
        np.testing.assert_array_equal(a, a0, err_msg=f"{name} modified an input")


# ============================================================================= backend registry

def test_unknown_backend():
    with pytest.raises(backend.BackendError, match="nope"):
        backend.use_backend("nope")
    assert backend.current_backend() == "numpy"


def test_unknown_op():
    with pytest.raises(backend.BackendError, match=r"(?=.*no_such_op)(?=.*numpy)"):
        backend.get_op("no_such_op", "numpy")
    with pytest.raises(backend.BackendError, match=r"(?=.*conv2d)(?=.*nope)"):
        backend.get_op("conv2d", "nope")


def test_get_op_returns_registered_numpy_function():
    from gpucnn.backends.numpy import conv
    assert backend.get_op("conv2d", "numpy") is conv.conv2d


def test_use_backend_context_manager_restores(monkeypatch):
    monkeypatch.setattr(backend, "_current", "numba")  # pretend another backend was active
    with backend.use_backend("numpy") as ctx:
        assert backend.current_backend() == "numpy" and ctx.name == "numpy"
    assert backend.current_backend() == "numba"
    with pytest.raises(ZeroDivisionError):
        with backend.use_backend("numpy"):
            1 / 0
    assert backend.current_backend() == "numba"


def test_use_backend_global_switch(monkeypatch):
    monkeypatch.setattr(backend, "_current", "numba")
    backend.use_backend("numpy")  # no `with`: stays switched
    assert backend.current_backend() == "numpy"


def test_info_lists_every_backend_with_reasons():
    info = backend.info()
    assert set(info) == {"numpy", "numba", "cupy"}
    assert info["numpy"]["available"] is True and info["numpy"]["reason"] is None
    assert "conv2d" in info["numpy"]["ops"] and "adam_step" in info["numpy"]["ops"]
    for name, entry in info.items():
        if entry["available"]:
            assert entry["reason"] is None
        else:
            assert isinstance(entry["reason"], str) and entry["reason"].strip(), name
            with pytest.raises(backend.BackendError, match=name):
                backend.use_backend(name)
    assert backend.available_backends() == [n for n in ("numpy", "numba", "cupy") if info[n]["available"]]


def test_auto_prefers_cupy_then_numba_then_numpy(monkeypatch):
    monkeypatch.setattr(backend, "simulated", lambda name: False)
    for works, expected in (({"numpy", "numba", "cupy"}, "cupy"), ({"numpy", "numba"}, "numba"), ({"numpy"}, "numpy")):
        monkeypatch.setattr(backend, "_probe", lambda name, works=works: None if name in works else "not here")
        assert backend.resolve("auto") == expected


def test_auto_picks_an_available_backend():
    with backend.use_backend("auto") as ctx:
        assert ctx.name in backend.available_backends()
        order = [n for n in ("cupy", "numba", "numpy")
                 if n in backend.available_backends() and not backend.simulated(n)]
        assert ctx.name == order[0]
