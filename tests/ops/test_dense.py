"""The dense family (linear, linear_backward; kernels/dense.cu on gemm.cuh, gpucnn/backends/*/dense.py) on
every backend.

NumPy against the loop oracle of tests/oracle.py (float32 and float64, plus float64 central differences),
Numba (simulator) and CuPy (emulator) against NumPy.
"""
import numpy as np
import pytest

import oracle as O
from helpers import EMU, HOST, SIM, assert_close, check_grad, grid, on, ref

F32, F64 = np.float32, np.float64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
ORACLE_TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences


def tol(be, dtype, reduction):
    """Against the oracle: as computed; against NumPy: FP32 sums in another order, error growing with their
    length (cupy's tiled GEMM as it was tested before: rtol 1e-4)."""
    if be.reference:
        return ORACLE_TOL[dtype]
    if dtype == F64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=1e-4 if be.name == "cupy" else 1e-5, atol=1e-6 * np.sqrt(reduction) * (10 if be.name == "cupy"
                                                                                               else 1))


# (N, in, out): ones, none a multiple of the simulator's 8-wide or the GPU's 16-wide tile, rows spanning
# several tiles, deep reductions (cupy: several tiles in M and N, K > 128, float4 and scalar loads)
LINEAR_CASES = {f"{n}x{i}x{o}": ((n, i, o), backends, *own) for (n, i, o), backends, *own in (
    ((1, 1, 1), SIM),
    ((3, 5, 4), HOST),
    ((7, 2, 3), HOST),
    ((1, 9, 2), HOST),
    ((4, 3, 1), HOST),
    *[((n, i, o), SIM) for n in (1, 3, 7) for i in (1, 5, 13) for o in (1, 4, 9) if (n, i, o) not in
      ((1, 1, 1), (7, 13, 9))],
    ((7, 13, 9), SIM, {"numba": (F32, F64)}),
    ((17, 19, 3), SIM),
    ((5, 37, 11), EMU),
    ((3, 8, 2), EMU),
    ((130, 200, 70), EMU),
    ((256, 64, 10), EMU),
    ((7, 129, 257), EMU),
)}


def data(case, dtype, seed=13):
    n, i, o = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, i)), rng.standard_normal((o, i)) / np.sqrt(i)
    b, dy = rng.standard_normal(o), rng.standard_normal((n, o))
    return tuple(a.astype(dtype) for a in (x, w, b, dy))


@pytest.mark.parametrize("be,case,dtype", grid(LINEAR_CASES, DTYPES))
def test_linear(be, case, dtype):
    n, i, o = case
    x, w, b, dy = data(case, dtype)
    # device inputs on one case of each GPU backend, host ones elsewhere
    put = be.device if case == (7, 13, 9) else (lambda a: a)
    for bias in (b, None):
        y = be.host(be.run("linear", put(x), put(w), None if bias is None else put(bias)))
        assert y.dtype == dtype
        want = O.linear(x, w, bias) if be.reference else ref("linear", x, w, bias)
        assert_close(y, want, **tol(be, dtype, i), name=f"y {'with' if bias is not None else 'without'} bias")
    grads = be.run("linear_backward", put(dy), put(x), put(w))
    want = O.linear_backward(dy, x, w) if be.reference else ref("linear_backward", dy, x, w)
    for got, e, name, red in zip(grads, want, ("dx", "dw", "db"), (o, n, n)):
        got = be.host(got)
        assert got.dtype == dtype
        assert_close(got, e, **tol(be, dtype, red), name=name)


@pytest.mark.parametrize("be,case", grid({cid: (c, HOST) for cid, (c, *_) in LINEAR_CASES.items()
                                          if c[0] * c[1] * c[2] <= 200}))
def test_linear_grad_fd(be, case):
    x, w, b, dy = data(case, F64)
    grads = be.run("linear_backward", dy, x, w)
    for k, name in enumerate(("dx", "dw", "db")):
        check_grad(lambda *a: be.run("linear", *a), [x, w, b], k, grads[k], dy, **GRAD, name=name)


@pytest.mark.parametrize("be", on(*SIM))
def test_linear_then_loss_on_device_arrays(be):
    """linear's device output is the loss's input; the loss comes back through to_numpy."""
    rng = np.random.default_rng(13)
    x, w, b = (rng.standard_normal(s).astype(F32) for s in ((3, 5), (4, 5), (4,)))
    labels = np.array([0, 3, 1])
    want_y = ref("linear", x, w, b)
    want_loss, want_d = ref("softmax_cross_entropy", want_y, labels)
    y = be.run("linear", be.device(x), be.device(w), be.device(b))
    loss, d = be.run("softmax_cross_entropy", y, labels)
    assert_close(be.host(y), want_y, rtol=1e-5, atol=1e-6, name="y")
    assert_close(be.host(loss), want_loss, rtol=1e-5, atol=1e-6, name="loss")
    assert_close(be.host(d), want_d, rtol=1e-5, atol=1e-6, name="dlogits")
    assert isinstance(float(be.run("to_numpy", loss)), float)


# --------------------------------------------------------------------------- numba: the GPU tile in the simulator

@pytest.mark.parametrize("be", on("numba"))
def test_numba_linear_gpu_tile_in_the_simulator(be, numba_launches, monkeypatch):
    """The GPU's 16-wide tile, run in the simulator: none of the sizes a multiple of 16; out (o) and depth
    (i) span two tiles."""
    from gpucnn.backends.numba import _common
    t = _common.GPU_TILE
    assert t != _common.SIM_TILE and t == 16
    monkeypatch.setattr(_common, "TILE", t)
    case = n, i, o = 5, 20, 18
    x, w, b, dy = data(case, F32, 21)
    assert_close(be.host(be.run("linear", x, w, b)), ref("linear", x, w, b), rtol=1e-5, atol=1e-6, name="y")
    for got, want, name in zip(be.run("linear_backward", dy, x, w), ref("linear_backward", dy, x, w),
                               ("dx", "dw", "db")):
        assert_close(be.host(got), want, rtol=1e-5, atol=1e-6, name=name)
    launches = [(f, c["tile"], g, blk) for f, c, g, blk in numba_launches]
    assert launches == [
        ("make_matmul", t, (2, 1, 1), (t, t, 1)),  # y (5, 18), depth 20
        ("make_matmul", t, (2, 1, 1), (t, t, 1)),  # dx (5, 20), depth 18
        ("make_matmul", t, (2, 2, 1), (t, t, 1)),  # dw (18, 20), depth 5
        ("make_col_sum", t, (2, 1, 1), (t, _common.SUM_LANES, 1)),  # db (18,)
    ], launches


# --------------------------------------------------------------------------- cupy: scalar path, refusals

@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_linear_misaligned_input_takes_the_scalar_path(be):
    """A contiguous but not 16-byte-aligned x must not be read with float4 loads (a GPU would fault)."""
    rng = np.random.default_rng(9)
    buf = be.device(rng.standard_normal(1 + 6 * 16).astype(F32))
    x = buf[1:].reshape(6, 16)
    assert x.flags.c_contiguous and x.data.ptr % 16
    w = rng.standard_normal((5, 16)).astype(F32)
    assert_close(be.host(be.run("linear", x, w, None)), ref("linear", be.host(x), w, None), rtol=1e-4, atol=4e-5)


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_linear_refuses_float64(be):
    with pytest.raises(TypeError, match="float32"):
        be.run("linear", np.ones((2, 3)), np.ones((4, 3)), None)


def _tf32(a):
    """Round to TF32 as cvt.rna.tf32.f32 does: nearest, ties away from zero, 10 mantissa bits."""
    u = np.ascontiguousarray(a, F32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(F32)


# TF32 mode: products of TF32-rounded operands summed in FP32, for the forward and both gradients: 16-byte
# loads (sizes multiples of 4), scalar loads (odd sizes), a forward split over K (the emulator's 4 SMs)
@pytest.mark.parametrize("case", [(128, 256, 64), (5, 37, 11), (4, 512, 8)], ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_linear_tf32_multiplies_tf32_rounded_inputs(be, case):
    import gpucnn
    x, w, b, dy = data(case, F32, seed=21)
    with gpucnn.config.tf32(True):
        y = be.host(be.run("linear", x, w, b))
        dx, dw, db = (be.host(a) for a in be.run("linear_backward", dy, x, w))
    X, W, DY = (_tf32(a).astype(F64) for a in (x, w, dy))
    for name, got, want, scale in (
            ("y", y, X @ W.T + b, np.abs(x).astype(F64) @ np.abs(w).T.astype(F64)),
            ("dx", dx, DY @ W, np.abs(dy).astype(F64) @ np.abs(w).astype(F64)),
            ("dw", dw, DY.T @ X, np.abs(dy).T.astype(F64) @ np.abs(x).astype(F64))):
        assert np.all(np.abs(got - want) <= 1e-6 * scale + 1e-6), f"TF32 {name} is not the TF32-rounded product"
        exact = {"y": x.astype(F64) @ w.T.astype(F64) + b, "dx": dy.astype(F64) @ w.astype(F64),
                 "dw": dy.T.astype(F64) @ x.astype(F64)}[name]
        assert np.max(np.abs(got - exact)) > 1e-5 * np.max(scale), f"TF32 {name} looks like FP32"
    assert_close(db, dy.sum(0), rtol=1e-5, atol=1e-5, name="db")
