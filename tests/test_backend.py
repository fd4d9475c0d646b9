"""The backend registry (get_backend, get_op, use_backend, info, 'auto') and the NumPy backend's arrays:
asarray/to_numpy/zeros_like, float32 in -> float32 out with the inputs untouched. The ops themselves are
tested per family in tests/ops/ on every backend."""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend

F32, F64 = np.float32, np.float64
DTYPES = [F32, F64]


def rand(rng, shape, dtype=F64, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


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
