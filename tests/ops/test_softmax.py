"""The softmax family (softmax, log_softmax, softmax_backward, softmax_cross_entropy; kernels/softmax.cu,
gpucnn/backends/*/softmax.py) on every backend.

NumPy against the loop oracle of tests/oracle.py (float32 and float64, the softmax Jacobian, float64
central differences), Numba (simulator) and CuPy (emulator) against NumPy.
"""
import numpy as np
import pytest

import oracle as O
from helpers import EMU, HOST, SIM, assert_close, check_grad, grid, on, ref

F32, F64 = np.float32, np.float64
I32, I64 = np.int32, np.int64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
ORACLE_TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences
BOTH = {"numba": (F32, F64)}  # numba specializes per dtype: float64 too on these cases


def cases(*rows, name):
    return {name(c): (c, backends, *own) for c, backends, *own in rows}


def dims(shape):
    return "x".join(map(str, shape))


# (shape, dim, scale of the logits): the last dim (cupy: warp-per-row kernels, rows shorter and longer than a
# warp, more rows than a block's warps) and inner dims (thread-per-row strided kernels), negative dims; logits
# around 1e4 (exp overflows unless the row maximum is subtracted)
SOFTMAX_CASES = cases(
    (((3, 5), 1, 3.0), SIM),
    (((3, 5), 0, 3.0), HOST),
    (((4, 6), -1, 3.0), HOST),
    (((4, 5), 1, 3.0), HOST),
    (((2, 3, 2, 2), 1, 3.0), SIM),
    (((2, 3, 4), 2, 3.0), SIM),
    (((1, 1), 1, 3.0), SIM),
    (((5,), 0, 3.0), HOST),
    (((7, 10), 1, 3.0), SIM),
    (((4, 6), 1, 1e4), SIM),
    (((5, 3), 0, 3.0), SIM),
    (((4, 10), 1, 3.0), EMU),
    (((3, 77), -1, 3.0), EMU),
    (((37, 5), 1, 3.0), EMU),
    (((2, 3, 4, 5), 1, 3.0), EMU),
    (((2, 3, 4, 5), 3, 3.0), EMU),
    (((5, 7, 3), 0, 3.0), EMU),
    (((2, 6, 3, 3), -3, 3.0), EMU),
    (((7,), 0, 3.0), EMU),
    (((300, 3), 0, 3.0), EMU),
    name=lambda c: f"{dims(c[0])}_dim{c[1]}" + (f"_x{c[2]:g}" if c[2] != 3 else ""),
)
# (N, classes, scale, shift of the logits, label dtype): one class, one row, rows and classes past a warp and a
# block; logits up to 3e4 (float32 rounding of x - max sets the tolerance) and shifted by 50 (the stable
# log-sum-exp is needed)
XENT_CASES = cases(
    *[((n, k, 3.0, 0.0, lab), HOST) for n, k in ((1, 2), (5, 4), (8, 10), (3, 1)) for lab in (I32, I64)],
    *[((6, 5, scale, 0.0, I64), HOST) for scale in (1e2, 1e4, 3e4)],
    *[((n, k, scale, 0.0, lab), SIM) for n, k, scale in ((1, 1, 1.0), (3, 4, 1.0), (7, 10, 3.0), (5, 6, 1e4))
      for lab in (I32, I64)],
    ((6, 5, 1.0, 0.0, I64), SIM, BOTH),
    ((1, 1, 4.0, 50.0, I64), EMU),
    ((1, 3, 4.0, 50.0, I64), EMU),
    ((5, 10, 4.0, 50.0, I32), EMU),
    ((37, 7, 4.0, 50.0, I64), EMU),
    ((9, 70, 4.0, 50.0, I64), EMU),
    ((300, 4, 4.0, 50.0, I32), EMU),
    ((6, 5, 4.0, 50.0, np.uint8), EMU),
    name=lambda c: f"{c[0]}x{c[1]}_x{c[2]:g}" + (f"+{c[3]:g}" if c[3] else "") + f"_{np.dtype(c[4]).name}",
)


def logits_of(case, dtype, seed):
    shape, _, scale = case
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    return (x + scale if scale > 100 else x).astype(dtype)


def softmax_backward_oracle(dy, y, dim):
    """dx = J(y) dy row by row along dim, J = diag(y) - y y^T (the softmax Jacobian), in float64."""
    rows, back = O._rows(y, dim)
    drows, _ = O._rows(dy, dim)
    return back(np.stack([(np.diag(r) - np.outer(r, r)) @ d for r, d in zip(rows, drows)]))


@pytest.mark.parametrize("be,case,dtype", grid(SOFTMAX_CASES, DTYPES))
def test_softmax_log_softmax_and_backward(be, case, dtype):
    shape, dim, scale = case
    x = logits_of(case, dtype, 14)
    dy = np.random.default_rng(15).standard_normal(shape).astype(dtype)
    y, ly = be.host(be.run("softmax", x, dim)), be.host(be.run("log_softmax", x, dim))
    assert y.dtype == ly.dtype == dtype
    y_np = ref("softmax", x, dim)
    dx = be.host(be.run("softmax_backward", dy, be.device(y_np), dim))
    assert dx.dtype == dtype
    if be.reference:
        assert_close(y, O.softmax(x, dim), **ORACLE_TOL[dtype], name="softmax")
        assert_close(ly, O.log_softmax(x, dim), **ORACLE_TOL[dtype], name="log_softmax")
        assert_close(dx, softmax_backward_oracle(dy, y_np, dim), **ORACLE_TOL[dtype], name="softmax_backward")
    else:
        assert_close(y, y_np, rtol=2e-6, atol=1e-7, name="softmax")
        assert_close(ly, ref("log_softmax", x, dim), rtol=2e-6, atol=1e-5 if scale > 100 else 2e-6,
                     name="log_softmax")
        assert_close(dx, ref("softmax_backward", dy, y_np, dim), rtol=1e-5, atol=1e-6, name="softmax_backward")


@pytest.mark.parametrize("be,case", grid({cid: (c, HOST) for cid, (c, *_) in SOFTMAX_CASES.items()
                                          if c[0][c[1]] > 1 and c[2] < 100}))
def test_softmax_grad_fd(be, case):
    shape, dim, _ = case
    rng = np.random.default_rng(15)
    x, dy = rng.standard_normal(shape) * 2.0, rng.standard_normal(shape)
    y = be.run("softmax", x, dim)
    check_grad(lambda x_: be.run("softmax", x_, dim), [x], 0, be.run("softmax_backward", dy, y, dim), dy, **GRAD,
               name="softmax")
    # log_softmax has no backward op: d/dx = dy - softmax(x) * sum(dy) along dim
    dlog = dy - O.softmax(x, dim) * dy.sum(axis=dim, keepdims=True)
    check_grad(lambda x_: be.run("log_softmax", x_, dim), [x], 0, dlog, dy, **GRAD, name="log_softmax")


LARGE_CASES = {  # (logits, dim): exp overflows unless the maximum along dim is subtracted
    "pm1e4": ((np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 3.0], [-1e4, -1e4, -1e4]]), 1), SIM),
    "1e3": ((np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1003.0]]), 1), SIM),
    # (1, 3, 2) along dim 1: the strided kernels, the maximum last along dim 1
    "1e3_inner": ((np.array([[[1000.0, -1000.0], [1001.0, -1000.0], [1199.0, -803.0]]]), 1), SIM),
}


@pytest.mark.parametrize("be,case,dtype", grid(LARGE_CASES, DTYPES))
def test_softmax_large_logits_stable(be, case, dtype):
    x, dim = case
    x = x.astype(dtype)
    for op, oracle in (("softmax", O.softmax), ("log_softmax", O.log_softmax)):
        got = be.host(be.run(op, x, dim))
        want = oracle(x, dim) if be.reference else ref(op, x, dim)
        assert_close(got, want, rtol=1e-5, atol=1e-6, name=op)


@pytest.mark.parametrize("be,case,dtype", grid(XENT_CASES, DTYPES))
def test_softmax_cross_entropy(be, case, dtype):
    n, k, scale, shift, label_dtype = case
    rng = np.random.default_rng(17)
    logits = (rng.standard_normal((n, k)) * scale + shift).astype(dtype)
    labels = rng.integers(0, k, n).astype(label_dtype)
    loss, d = be.run("softmax_cross_entropy", logits, labels)
    loss, d = be.host(loss), be.host(d)
    assert loss.shape == () and loss.dtype == dtype and d.dtype == dtype
    loss_tol = dict(rtol=1e-5, atol=1e-6) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
    if be.reference:
        want_loss, want_d = O.softmax_cross_entropy(logits, labels)
        d_tol = ORACLE_TOL[dtype] if scale < 100 else dict(rtol=1e-5, atol=1e-6)
    else:
        want_loss, want_d = ref("softmax_cross_entropy", logits, labels)
        d_tol = dict(rtol=1e-5, atol=1e-7) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(loss, want_loss, **loss_tol, name="loss")
    assert_close(d, want_d, **d_tol, name="dlogits")
    again = be.host(be.run("softmax_cross_entropy", logits, labels)[0])  # deterministic: the same bits
    assert again.tobytes() == loss.tobytes()


@pytest.mark.parametrize("be,case", grid({cid: (c, HOST) for cid, (c, *_) in XENT_CASES.items()
                                          if c[1] > 1 and c[2] < 100}))
def test_softmax_cross_entropy_grad_fd(be, case):
    n, k, scale, shift, label_dtype = case
    rng = np.random.default_rng(17)
    logits = rng.standard_normal((n, k)) * scale + shift
    labels = rng.integers(0, k, n).astype(label_dtype)
    d = be.run("softmax_cross_entropy", logits, labels)[1]
    check_grad(lambda z: be.run("softmax_cross_entropy", z, labels)[0], [logits], 0, d, None, **GRAD)


@pytest.mark.parametrize("be,case,dtype", grid({"1x3_1e4": (np.array([[1e4, -1e4, 0.0]]), HOST)}, DTYPES))
def test_softmax_cross_entropy_extremes(be, case, dtype):
    x = case.astype(dtype)
    loss, d = be.run("softmax_cross_entropy", x, np.array([0]))
    assert float(loss) == 0.0 and np.all(np.abs(d) < 1e-30)
    loss, d = be.run("softmax_cross_entropy", x, np.array([1]))
    assert_close(loss, 2e4, rtol=1e-6, atol=0)
    assert_close(d, [[1.0, -1.0, 0.0]], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- numba: the GPU tile in the simulator

@pytest.mark.parametrize("be", on("numba"))
def test_numba_softmax_cross_entropy_gpu_tile_in_the_simulator(be, numba_launches, monkeypatch):
    """The batch mean's column sum with the GPU's 16-wide tile: one 16-column block whose lanes stride
    over 19 rows."""
    from gpucnn.backends.numba import _common
    monkeypatch.setattr(_common, "TILE", _common.GPU_TILE)
    rng = np.random.default_rng(22)
    logits, labels = (rng.standard_normal((19, 7)) * 3.0).astype(F32), rng.integers(0, 7, 19)
    loss, d = be.run("softmax_cross_entropy", logits, labels)
    want_loss, want_d = ref("softmax_cross_entropy", logits, labels)
    assert_close(be.host(loss), want_loss, rtol=1e-5, atol=1e-6, name="loss")
    assert_close(be.host(d), want_d, rtol=1e-5, atol=1e-6, name="dlogits")
    t = _common.GPU_TILE
    assert [(f, c["tile"], g, blk) for f, c, g, blk in numba_launches] == [
        ("make_col_sum", t, (1, 1, 1), (t, _common.SUM_LANES, 1))]


# --------------------------------------------------------------------------- cupy: refusals of the launchers

@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_softmax_family_refuses_bad_inputs(be):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype(F32)
    with pytest.raises(TypeError, match="float32"):
        be.run("softmax", x.astype(F64))
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("log_softmax", be.device(rng.standard_normal((4, 12)).astype(F32))[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("softmax_backward", x, be.device(rng.standard_normal((4, 12)).astype(F32))[:, ::2])
    with pytest.raises(TypeError, match="float32"):
        be.run("softmax_cross_entropy", x.astype(F64), np.zeros(4, I64))
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("softmax_cross_entropy", x, be.device(np.zeros(8, I64))[::2])
