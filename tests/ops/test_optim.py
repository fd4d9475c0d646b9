"""The optim family (sgd_step, adam_step; kernels/optim.cu, gpucnn/backends/*/optim.py) on every backend.

NumPy against the reference optimizers of tests/oracle.py (as torch.optim), Numba and CuPy against NumPy,
several steps each, parameters updated in place on the backend's own arrays.
"""
import numpy as np
import pytest

import oracle as O
from helpers import EMU, SIM, assert_close, grid, on, ref

F32, F64 = np.float32, np.float64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
TOL = {F32: dict(rtol=1e-5, atol=1e-6), F64: dict(rtol=1e-12, atol=1e-14)}
STEPS = 4
# parameter shapes; the simulator takes the first three. (4097,) spans two 4096-element chunks of the
# cupy multi-tensor kernels (one launch for all parameters)
SHAPES = [(3, 4), (5,), (1,), (2, 3, 3, 3), (7, 11), (4097,)]


def shapes(be):
    return SHAPES[:3] if be.name == "numba" else SHAPES


def cfg_id(cfg):
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "defaults"


def cases(*rows):
    return {cfg_id(cfg): (cfg, backends, *own) for cfg, backends, *own in rows}


SGD_CASES = cases(
    (dict(lr=0.1), SIM),
    (dict(lr=0.05, weight_decay=0.1), EMU),
    (dict(lr=0.1, weight_decay=0.05), EMU),
    (dict(lr=0.1, momentum=0.9), SIM),
    (dict(lr=0.1, momentum=0.9, dampening=0.3), EMU),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3), EMU),
    (dict(lr=0.02, momentum=0.8, nesterov=True), EMU),
    (dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-2), EMU),
    (dict(lr=0.1, momentum=0.5, dampening=0.2, weight_decay=0.05), EMU),
    (dict(lr=0.1, momentum=0.5, dampening=0.3, weight_decay=0.1), SIM),
    (dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), SIM),
)
ADAM_CASES = cases(
    (dict(), EMU),
    (dict(lr=0.01), SIM),
    (dict(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6), EMU),
    (dict(lr=0.01, weight_decay=0.1), EMU),
    (dict(lr=0.01, weight_decay=0.05), SIM),
    (dict(lr=0.01, weight_decay=0.01), SIM, {"numba": (F32, F64)}),
    (dict(lr=0.1, beta1=0.5, beta2=0.9, eps=1e-3, weight_decay=0.01), EMU),
)


def start(be, request, seed):
    """The cupy launch log (cupy only), the random generator and the parameter shapes of one run."""
    launches = request.getfixturevalue("cupy_launches") if be.name == "cupy" else []
    return launches, np.random.default_rng(seed), shapes(be)


def rand(rng, shapes_, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in shapes_]


@pytest.mark.parametrize("be,cfg,dtype", grid(SGD_CASES, DTYPES))
def test_sgd_step(be, cfg, dtype, request):
    launches, rng, shp = start(be, request, 27)
    params = rand(rng, shp, dtype)
    bufs = rand(rng, shp, dtype)  # junk: the first step must overwrite it
    p_dev, b_dev = [be.device(p.copy()) for p in params], [be.device(b.copy()) for b in bufs]
    want = O.SGD([p.copy() for p in params], **cfg) if be.reference else None
    for t in range(STEPS):
        grads = rand(rng, shp, dtype)
        ids = [id(p) for p in p_dev]
        assert be.run("sgd_step", p_dev, [be.device(g) for g in grads], b_dev, first_step=(t == 0), **cfg) is None
        assert [id(p) for p in p_dev] == ids  # in place
        if want is not None:
            want.step(grads)
            exp_p, exp_b = want.params, want.bufs
        else:
            ref("sgd_step", params, grads, bufs, first_step=(t == 0), **cfg)
            exp_p, exp_b = params, bufs
        for i in range(len(shp)):
            got = be.host(p_dev[i])
            assert got.dtype == dtype
            assert_close(got, exp_p[i], **TOL[dtype], name=f"step {t + 1} param {i}")
            if cfg.get("momentum"):
                assert_close(be.host(b_dev[i]), exp_b[i], **TOL[dtype], name=f"step {t + 1} buffer {i}")
    if be.name == "cupy":
        assert launches == ["sgd_multi"] * STEPS  # one launch per step for all the parameters


@pytest.mark.parametrize("be,cfg,dtype", grid(ADAM_CASES, DTYPES))
def test_adam_step(be, cfg, dtype, request):
    launches, rng, shp = start(be, request, 28)
    params = rand(rng, shp, dtype)
    m, v = [np.zeros(s, dtype) for s in shp], [np.zeros(s, dtype) for s in shp]
    p_dev, m_dev, v_dev = ([be.device(a.copy()) for a in arrays] for arrays in (params, m, v))
    if be.reference:
        ref_cfg = {k: v_ for k, v_ in cfg.items() if k not in ("beta1", "beta2")}
        want = O.Adam([p.copy() for p in params], betas=(cfg.get("beta1", 0.9), cfg.get("beta2", 0.999)), **ref_cfg)
    for t in range(1, STEPS + 1):
        grads = rand(rng, shp, dtype)
        be.run("adam_step", p_dev, [be.device(g) for g in grads], m_dev, v_dev, t, **cfg)
        if be.reference:
            want.step(grads)
            exp = (want.params, want.m, want.v)
        else:
            ref("adam_step", params, grads, m, v, t, **cfg)
            exp = (params, m, v)
        for name, got, e in zip(("param", "exp_avg", "exp_avg_sq"), (p_dev, m_dev, v_dev), exp):
            for i in range(len(shp)):
                g = be.host(got[i])
                assert g.dtype == dtype
                assert_close(g, e[i], **TOL[dtype], name=f"step {t} {name} {i}")
    if be.name == "cupy":
        # the bias corrections of each step come from a one-thread kernel advancing the step on the device
        assert launches == ["adam_advance", "adam_multi"] * STEPS


# --------------------------------------------------------------------------- cupy: device step, tables, refusals

@pytest.mark.parametrize("be", on("cupy"))
def test_adam_step_out_of_sequence_resets_the_device_step(be):
    """Steps need not be consecutive (a restored optimizer, a fresh one on the same parameters): the
    device counter is set from the host's step whenever it is not already step - 1."""
    p_ref = rand(np.random.default_rng(2), SHAPES, F32)
    p = [be.device(a) for a in p_ref]
    for step in (3, 1, 7, 8):
        m_ref, v_ref = [np.full_like(a, 0.1) for a in p_ref], [np.full_like(a, 0.2) for a in p_ref]
        m, v = [be.device(a) for a in m_ref], [be.device(a) for a in v_ref]
        grads = rand(np.random.default_rng(40 + step), SHAPES, F32)
        be.run("adam_step", p, [be.device(g) for g in grads], m, v, step, lr=1e-2)
        ref("adam_step", p_ref, grads, m_ref, v_ref, step, lr=1e-2)
        for i, (a, e) in enumerate(zip(p, p_ref)):
            assert_close(be.host(a), e, **TOL[F32], name=f"param {i} after step {step}")


@pytest.mark.parametrize("be", on("cupy"))
def test_optimizer_tables_are_built_once_per_parameter_list(be, monkeypatch):
    from gpucnn.backends.cupy import _runtime
    built = []
    real = _runtime.TensorTable.__init__

    def spy(self, *a, **k):
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(_runtime.TensorTable, "__init__", spy)
    rng = np.random.default_rng(3)
    p, grads = [be.device(a) for a in rand(rng, SHAPES, F32)], [be.device(a) for a in rand(rng, SHAPES, F32)]
    bufs = [be.device(np.zeros(s, F32)) for s in SHAPES]
    for step in range(3):
        be.run("sgd_step", p, grads, bufs, lr=0.1, momentum=0.9, first_step=step == 0)
    assert len(built) == 1
    other = [be.device(a) for a in rand(rng, SHAPES, F32)]
    be.run("sgd_step", p, other, bufs, lr=0.1, momentum=0.9)  # other gradient arrays: another table
    assert len(built) == 2


@pytest.mark.parametrize("be", on("cupy"))
def test_optimizers_refuse_bad_parameters_before_updating_any(be):
    rng = np.random.default_rng(6)
    keep = rand(rng, SHAPES, F32)
    p = [be.device(a) for a in keep]
    grads = rand(rng, SHAPES, F32)
    grads[-1] = grads[-1].astype(F64)
    bufs = [be.device(np.zeros_like(a)) for a in keep]
    with pytest.raises(TypeError, match="float32"):
        be.run("sgd_step", p, [be.device(g) for g in grads], bufs, lr=0.1, momentum=0.9)
    strided = [be.device(np.zeros(a.size * 2, F32))[::2].reshape(a.shape) for a in keep]
    fresh = [be.device(a) for a in rand(rng, SHAPES, F32)]
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("adam_step", p, fresh, strided, [be.device(np.zeros_like(a)) for a in keep], 1)
    with pytest.raises(TypeError, match="updated in place"):  # host parameters: the update would be lost
        be.run("sgd_step", keep, fresh, bufs, lr=0.1)
    for a, b in zip(p, keep):
        assert_close(be.host(a), b, rtol=0, atol=0)


@pytest.mark.parametrize("be", on("numba"))
def test_numba_optimizers_refuse_host_arrays(be):
    p = np.ones(3, F32)
    with pytest.raises(TypeError, match="device array"):
        be.op("sgd_step")([p], [p], [p], 0.1, 0.9, 0.0, False, 0.0, True)
    with pytest.raises(TypeError, match="device array"):
        be.op("adam_step")([be.device(p)], [p], [p], [p], 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)
