"""The norm family (batch_norm in training and eval, batch_norm_backward; kernels/norm.cu,
gpucnn/backends/*/norm.py) on every backend.

NumPy against the loop oracle of tests/oracle.py (float32 and float64; its float32 backward against its
float64 one; float64 central differences), Numba (simulator) and CuPy (emulator) against NumPy. Running
statistics are updated in place: on the GPU backends they are device arrays.
"""
import numpy as np
import pytest

import oracle as O
from helpers import EMU, HOST, SIM, assert_close, check_grad, grid, on, ref

F32, F64 = np.float32, np.float64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
ORACLE_TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences
EXACT = dict(rtol=0, atol=0)


def tol(dtype, backward=False):
    """The GPU backends against NumPy."""
    if dtype == F64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=1e-4, atol=2e-5) if backward else dict(rtol=2e-5, atol=2e-6)


# x shapes (N, C) and (N, C, H, W): one value per channel (eval only), one channel, 1x1 planes, several
# blocks' worth of values per channel (cupy: more than its block), more channels than a warp
BN_CASES = {"x".join(map(str, s)): (s, backends, *own) for s, backends, *own in (
    ((6, 3), HOST),
    ((4, 2, 3, 3), HOST),
    ((2, 3, 1, 1), HOST),
    ((1, 2, 2, 3), HOST),
    ((3, 1), HOST),
    ((1, 3), HOST),
    ((1, 2, 1, 1), HOST),
    ((7, 3), SIM),
    ((3, 2, 3, 3), SIM),
    ((2, 1, 1, 5), SIM),
    ((4, 3, 2, 2), SIM, {"numba": (F64,)}),  # numba: float64 (its float32 runs on the three above)
    ((2, 3), EMU),
    ((5, 1), EMU),
    ((300, 4), EMU),
    ((7, 40), EMU),
    ((2, 3, 4, 5), EMU),
    ((1, 2, 3, 3), EMU),
    ((4, 3, 9, 10), EMU),
    ((3, 5, 1, 1), EMU),
)}
TRAIN_CASES = {cid: c for cid, c in BN_CASES.items() if np.prod(c[0]) // c[0][1] > 1}  # 2+ values a channel
# training runs: (affine, running statistics, momentum, eps)
TRAIN_MODES = {
    "affine": (True, True, 0.1, 1e-5),
    "affine_m0.3_eps1e-4": (True, True, 0.3, 1e-4),
    "plain": (False, True, 0.1, 1e-5),
    "plain_no_running_stats": (False, False, 0.1, 1e-5),
}
# the simulator is slow: it runs "affine" and "plain", and on the 4x3x2x2 case without running statistics
SIM_MODES = {"affine": None, "plain": None, "plain_no_running_stats": (4, 3, 2, 2)}


def train_params():
    """grid(TRAIN_CASES, DTYPES) times TRAIN_MODES, the numba backend on SIM_MODES only."""
    out = []
    for p in grid(TRAIN_CASES, DTYPES):
        be, shape, _ = p.values
        for mode in TRAIN_MODES:
            if be.name == "numba" and (mode not in SIM_MODES or SIM_MODES[mode] not in (None, shape)):
                continue
            out.append(pytest.param(*p.values, mode, id=f"{p.id}-{mode}", marks=p.marks))
    return out


def fd(cases):
    """The small cases as float64 central-difference checks on the NumPy backend."""
    return {cid: (c[0], HOST) for cid, c in cases.items() if np.prod(c[0]) <= 80}


def bn_data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 2.0 + np.arange(c).reshape((1, c) + (1,) * (len(shape) - 2))
    w, b, rm = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c)
    rv, dy = 0.5 + rng.random(c), rng.standard_normal(shape)
    return tuple(a.astype(dtype) for a in (x, w, b, rm, rv, dy))


def check_backward(be, dtype, dy, x, w, save_mean, save_invstd, training):
    got = be.run("batch_norm_backward", dy, x, w, be.device(save_mean), be.device(save_invstd), training=training)
    if be.reference:  # float32 against float64 (exact statistics from the float32 inputs); float64: the FD test
        want = be.run("batch_norm_backward", *(None if a is None else a.astype(F64) for a in (dy, x, w)),
                      save_mean.astype(F64), save_invstd.astype(F64), training=training)
        t = dict(rtol=1e-3, atol=1e-4) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
    else:
        want = ref("batch_norm_backward", dy, x, w, save_mean, save_invstd, training=training)
        t = tol(dtype, backward=True)
    for g, e, name in zip(got, want, ("dx", "dweight", "dbias")):
        if e is None:
            assert g is None and w is None, name
        else:
            g = be.host(g)
            assert g.dtype == dtype
            assert_close(g, e, **t, name=name)


@pytest.mark.parametrize("be,shape,dtype,mode", train_params())
def test_batch_norm_training(be, shape, dtype, mode):
    affine, stats, momentum, eps = TRAIN_MODES[mode]
    x, w, b, rm, rv, dy = bn_data(shape, dtype, 23)
    if not affine:
        w = b = None
    rm_dev, rv_dev = (be.device(rm.copy()), be.device(rv.copy())) if stats else (None, None)
    y, save_mean, save_invstd = (be.host(a) for a in be.run("batch_norm", x, rm_dev, rv_dev, w, b, training=True,
                                                             momentum=momentum, eps=eps))
    assert y.dtype == save_mean.dtype == save_invstd.dtype == dtype
    if be.reference:
        want_y, mean, var, uvar = O.batch_norm_train(x, w, b, eps)
        want = (want_y, mean, 1 / np.sqrt(var + eps))
        # running statistics, in place, as torch: unbiased variance
        want_rm, want_rv = (1 - momentum) * rm.astype(F64) + momentum * mean, (1 - momentum) * rv.astype(F64) + \
            momentum * uvar
        t = ORACLE_TOL[dtype]
        if not affine:  # per-channel mean 0, variance 1 (up to eps)
            axes = (0,) if x.ndim == 2 else (0, 2, 3)
            assert_close(y.astype(F64).mean(axis=axes), np.zeros(shape[1]), rtol=0, atol=1e-5)
            assert_close(y.astype(F64).var(axis=axes), var / (var + eps), rtol=1e-4, atol=0)
    else:
        want_rm, want_rv = rm.copy(), rv.copy()
        want = ref("batch_norm", x, want_rm if stats else None, want_rv if stats else None, w, b, training=True,
                   momentum=momentum, eps=eps)
        t = tol(dtype)
    for name, g, e in zip(("y", "save_mean", "save_invstd"), (y, save_mean, save_invstd), want):
        assert_close(g, e, **t, name=name)
    if stats:
        for name, g, e, before in (("running_mean", rm_dev, want_rm, rm), ("running_var", rv_dev, want_rv, rv)):
            g = be.host(g)
            assert g.dtype == dtype
            assert_close(g, e, **t, name=name)
            assert not np.allclose(g, before), f"{name} should have moved"
    check_backward(be, dtype, dy, x, w, save_mean, save_invstd, True)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("be,shape,dtype", grid(BN_CASES, DTYPES))
def test_batch_norm_eval(be, shape, dtype, affine):
    x, w, b, rm, rv, dy = bn_data(shape, dtype, 24)
    if not affine:
        w = b = None
    rm_dev, rv_dev = be.device(rm.copy()), be.device(rv.copy())
    y, save_mean, save_invstd = (be.host(a) for a in be.run("batch_norm", x, rm_dev, rv_dev, w, b, training=False))
    assert y.dtype == dtype
    if be.reference:
        want = (O.batch_norm_eval(x, rm, rv, w, b), rm, 1 / np.sqrt(rv.astype(F64) + 1e-5))
        t = ORACLE_TOL[dtype]
    else:
        want, t = ref("batch_norm", x, rm, rv, w, b, training=False), dict(rtol=1e-6, atol=1e-6)
    for name, g, e in zip(("y", "save_mean", "save_invstd"), (y, save_mean, save_invstd), want):
        assert_close(g, e, **t, name=name)
    assert_close(save_mean, rm, **EXACT, name="save_mean = running_mean")
    assert_close(be.host(rm_dev), rm, **EXACT, name="running_mean (eval leaves it alone)")
    assert_close(be.host(rv_dev), rv, **EXACT, name="running_var (eval leaves it alone)")
    check_backward(be, dtype, dy, x, w, save_mean, save_invstd, False)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("be,shape", grid(fd(TRAIN_CASES)))
def test_batch_norm_grad_fd(be, shape, training, affine):
    x, w, b, rm, rv, dy = bn_data(shape, F64, 25)
    if not affine:
        w = b = None
    # running stats are mutated in training; the function of x must not see that, so pass copies
    fwd = lambda x_, w_, b_: be.run("batch_norm", x_, rm.copy(), rv.copy(), w_, b_, training=training)[0]
    _, save_mean, save_invstd = be.run("batch_norm", x, rm.copy(), rv.copy(), w, b, training=training)
    dx, dw, db = be.run("batch_norm_backward", dy, x, w, save_mean, save_invstd, training=training)
    check_grad(fwd, [x, w, b], 0, dx, dy, **GRAD, name="dx")
    if affine:
        check_grad(fwd, [x, w, b], 1, dw, dy, **GRAD, name="dweight")
        check_grad(fwd, [x, w, b], 2, db, dy, **GRAD, name="dbias")
    else:
        assert dw is None and db is None


# --------------------------------------------------------------------------- numba: GPU threads, host statistics

@pytest.mark.parametrize("be", on("numba"))
def test_numba_batch_norm_gpu_threads_in_the_simulator(be, numba_launches, monkeypatch):
    """Batch norm's per-channel reductions with 256-thread blocks. norm.py imports REDUCE_THREADS by value
    and its kernels read it as a global: the simulator reads globals at run time, so patching both modules
    selects the GPU block here (on a GPU it is already the value compiled in)."""
    from gpucnn.backends.numba import _common, norm

    threads = _common.GPU_REDUCE_THREADS
    assert threads != 64
    monkeypatch.setattr(_common, "REDUCE_THREADS", threads)
    monkeypatch.setattr(norm, "REDUCE_THREADS", threads)
    shape = (5, 2, 7, 8)  # 280 values per channel: threads stride past 256, unevenly
    x, w, b, rm, rv, dy = bn_data(shape, F32, 23)
    rm_ref, rv_ref, rm_dev, rv_dev = rm.copy(), rv.copy(), be.device(rm), be.device(rv)
    want = ref("batch_norm", x, rm_ref, rv_ref, w, b, training=True)
    got = be.run("batch_norm", x, rm_dev, rv_dev, w, b, training=True)
    for g, e, name in zip(got, want, ("y", "save_mean", "save_invstd")):
        assert_close(be.host(g), e, **tol(F32), name=name)
    assert_close(be.host(rm_dev), rm_ref, **tol(F32), name="running_mean")
    assert_close(be.host(rv_dev), rv_ref, **tol(F32), name="running_var")
    for g, e, name in zip(be.run("batch_norm_backward", dy, x, w, got[1], got[2]),
                          ref("batch_norm_backward", dy, x, w, want[1], want[2]), ("dx", "dweight", "dbias")):
        assert_close(be.host(g), e, **tol(F32, backward=True), name=name)
    assert [(f, g, blk) for f, _, g, blk in numba_launches] == [
        ("make_bn_fwd_stats", (2, 1, 1), (threads, 1, 1)), ("make_bn_bwd_reduce", (2, 1, 1), (threads, 1, 1))]


@pytest.mark.parametrize("be", on("numba"))
def test_numba_batch_norm_refuses_host_running_stats_in_training(be):
    x = np.ones((4, 2), F32)
    with pytest.raises(TypeError, match="device array"):
        be.op("batch_norm")(x, np.zeros(2, F32), np.ones(2, F32), None, None, True, 0.1, 1e-5)


# --------------------------------------------------------------------------- cupy: refusals of the launchers

@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_batch_norm_refusals(be):
    x = np.random.default_rng(13).standard_normal((4, 3, 2, 2)).astype(F32)
    rm, rv = be.device(np.zeros(3, F32)), be.device(np.ones(3, F32))
    with pytest.raises(TypeError, match="float32"):
        be.run("batch_norm", x.astype(F64), be.device(np.zeros(3)), be.device(np.ones(3)), training=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("batch_norm", be.device(np.zeros((4, 3, 2, 4), F32))[..., ::2], rm, rv, training=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("batch_norm", x, be.device(np.zeros(6, F32))[::2], rv, training=True)
    with pytest.raises(TypeError, match="updated in place"):  # a host array would update an uploaded copy
        be.run("batch_norm", x, np.zeros(3, F32), rv, training=True)
    # refused before any launch: nothing was updated
    assert_close(be.host(rm), np.zeros(3), **EXACT)
    assert_close(be.host(rv), np.ones(3), **EXACT)
