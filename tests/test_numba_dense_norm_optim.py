"""Numba kernels of the batch-norm ops against the NumPy backend (dense, softmax: tests/ops/).

Runs on Numba's CUDA simulator without a GPU (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1),
so shapes are tiny: every launch stays well under 1,000 simulated threads. Outputs start as NaN
(POISON), so an element a kernel forgets to write fails the comparison.
"""
import numpy as np
import pytest

pytest.importorskip("numba")

import gpucnn  # noqa: E402
from gpucnn import backend, functional as F  # noqa: E402
from gpucnn.backends.numba import _common  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def ops(name):
    return backend.get_op(name, "numpy"), backend.get_op(name, "numba")


def host(a):
    out = a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
    assert not np.isnan(out).any(), "NaN in a numba result (an element left unwritten?)"
    return out


def check(got, want, rtol=RTOL, atol=ATOL, name="value"):
    got = host(got)
    assert got.shape == np.shape(want), f"{name}: shape {got.shape}, expected {np.shape(want)}"
    assert got.dtype == np.asarray(want).dtype, f"{name}: dtype {got.dtype}, expected {np.asarray(want).dtype}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def rand(rng, *shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def dev(a):
    """A host array copied to the device by the numba backend's asarray."""
    return backend.get_backend("numba").asarray(a)


# --------------------------------------------------------------------------- batch norm

BN_SHAPES = [(7, 3), (3, 2, 3, 3), (2, 1, 1, 5)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(shape, training, affine):
    rng = np.random.default_rng(sum(shape) + 2 * training + affine)
    c = shape[1]
    x = rand(rng, *shape, scale=2.0) + np.float32(0.5)
    rm, rv = rand(rng, c), (rng.random(c) + 0.5).astype(np.float32)
    w, b = (rand(rng, c), rand(rng, c)) if affine else (None, None)
    ref, nb = ops("batch_norm")
    rm_ref, rv_ref = rm.copy(), rv.copy()
    rm_dev, rv_dev = dev(rm), dev(rv)
    want = ref(x, rm_ref, rv_ref, w, b, training, 0.1, 1e-5)
    got = nb(x, rm_dev, rv_dev, w, b, training, 0.1, 1e-5)
    for g, e, name in zip(got, want, ("y", "save_mean", "save_invstd")):
        check(g, e, name=name)
    check(rm_dev, rm_ref, name="running_mean")
    check(rv_dev, rv_ref, name="running_var")
    if training:
        assert not np.allclose(rv_ref, rv), "the running variance should have moved"

    dy = rand(rng, *shape)
    ref_b, nb_b = ops("batch_norm_backward")
    want_b = ref_b(dy, x, w, want[1], want[2], training)
    got_b = nb_b(dy, x, w, got[1], got[2], training)
    for g, e, name in zip(got_b, want_b, ("dx", "dweight", "dbias")):
        if e is None:
            assert g is None, name
        else:
            check(g, e, atol=1e-5, name=name)


def test_batch_norm_training_without_running_stats_and_float64():
    rng = np.random.default_rng(5)
    x = rand(rng, 4, 3, 2, 2, dtype=np.float64)
    ref, nb = ops("batch_norm")
    for g, e in zip(nb(x, None, None, None, None, True, 0.1, 1e-5), ref(x, None, None, None, None, True, 0.1, 1e-5)):
        check(g, e, rtol=1e-12, atol=1e-12)


def test_batch_norm_refuses_host_running_stats_in_training():
    x = np.ones((4, 2), np.float32)
    nb = backend.get_op("batch_norm", "numba")
    with pytest.raises(TypeError, match="device array"):
        nb(x, np.zeros(2, np.float32), np.ones(2, np.float32), None, None, True, 0.1, 1e-5)


# --------------------------------------------------------------------------- the GPU geometry in the simulator

# The simulator runs the dense kernels with _common.SIM_TILE (8) and batch norm with 64-thread blocks, a GPU
# with _common.GPU_TILE (16) and _common.GPU_REDUCE_THREADS (256). These tests run the GPU geometry in the
# simulator on small shapes that are not multiples of the tile and span several tiles (about a thousand
# simulated threads per launch at most), and check from the recorded launches that it was the one used.

def _closure(kernel):
    """The compile-time values a kernel factory froze into `kernel` (its closure), by name."""
    fn = kernel.py_func
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))


class _LaunchSpy:
    """Stands in for a kernel: records (factory, closure, grid, block) of every launch, then launches."""

    def __init__(self, kernel, factory, log):
        self.kernel, self.factory, self.log = kernel, factory, log

    def __getitem__(self, config):
        grid, block = (tuple(np.atleast_1d(c).tolist() + [1] * (3 - np.size(c))) for c in config[:2])  # 3-D
        self.log.append((self.factory, _closure(self.kernel), grid, block))
        return self.kernel[config]


def test_batch_norm_gpu_threads_in_the_simulator(monkeypatch):
    """Batch norm's per-channel reductions with 256-thread blocks. norm.py imports REDUCE_THREADS by value
    and its kernels read it as a global: the simulator reads globals at run time, so patching both modules
    selects the GPU block here (on a GPU it is already the value compiled in)."""
    from gpucnn.backends.numba import norm

    threads = _common.GPU_REDUCE_THREADS
    assert threads != 64
    monkeypatch.setattr(_common, "REDUCE_THREADS", threads)
    monkeypatch.setattr(norm, "REDUCE_THREADS", threads)
    log = []
    real = _common.specialize
    monkeypatch.setattr(_common, "specialize",
                        lambda cache, factory, dtype: _LaunchSpy(real(cache, factory, dtype), factory.__name__, log))
    shape = (5, 2, 7, 8)  # 280 values per channel: threads stride past 256, unevenly
    rng = np.random.default_rng(23)
    x, w, b, dy = rand(rng, *shape, scale=2.0) + np.float32(0.5), rand(rng, 2), rand(rng, 2), rand(rng, *shape)
    rm, rv = rand(rng, 2), (rng.random(2) + 0.5).astype(np.float32)
    ref, nb = ops("batch_norm")
    rm_ref, rv_ref, rm_dev, rv_dev = rm.copy(), rv.copy(), dev(rm), dev(rv)
    want = ref(x, rm_ref, rv_ref, w, b, True, 0.1, 1e-5)
    got = nb(x, rm_dev, rv_dev, w, b, True, 0.1, 1e-5)
    for g, e, name in zip(got, want, ("y", "save_mean", "save_invstd")):
        check(g, e, name=name)
    check(rm_dev, rm_ref, name="running_mean")
    check(rv_dev, rv_ref, name="running_var")
    ref_b, nb_b = ops("batch_norm_backward")
    for g, e, name in zip(nb_b(dy, x, w, got[1], got[2], True), ref_b(dy, x, w, want[1], want[2], True),
                          ("dx", "dweight", "dbias")):
        check(g, e, atol=1e-5, name=name)
    assert [(f, g, blk) for f, _, g, blk in log] == [
        ("make_bn_fwd_stats", (2, 1, 1), (threads, 1, 1)), ("make_bn_bwd_reduce", (2, 1, 1), (threads, 1, 1))]


# --------------------------------------------------------------------------- float32 discipline

# Types every kernel for the real CUDA target (Numba's typing and LLVM lowering: no GPU, driver or
# NVVM needed) with float32 arrays and scalars, and fails on any float64 variable or `double` in the
# IR; float64 arrays must type too. Runs in a subprocess: under the simulator numba.cuda has no compiler.
_TYPE_CHECK = r'''
import re, sys, types as pytypes
try:
    import numba
    from numba import types as T
    from numba.cuda import compiler
    import numba.cuda.dispatcher as disp
    compiler.compile_cuda
except (ImportError, AttributeError) as e:
    print("SKIP: numba.cuda.compiler.compile_cuda is not available:", e); sys.exit(0)
disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(8, 0))  # device functions ask
from gpucnn.backends.numba import _common, dense, softmax, norm, optim

bad = []
for fl, nbt in ((T.float32, numba.float32), (T.float64, numba.float64)):
    b, i = T.boolean, T.int64
    A1, A2 = T.Array(fl, 1, "C"), T.Array(fl, 2, "C")
    cases = {
        "matmul": (dense.make_matmul(nbt), (A2, A2, A1, A2, b, b, b, fl)),
        "col_sum": (_common.make_col_sum(nbt), (A2, A1, fl, fl)),
        "softmax_rows": (softmax.softmax_rows, (A1, A1, i, i, b, fl)),
        "softmax_bwd_rows": (softmax.softmax_bwd_rows, (A1, A1, A1, i, i, fl)),
        "softmax_xent int64": (softmax.softmax_xent, (A2, T.Array(T.int64, 1, "C"), A2, A2,
                                                      T.Array(T.int32, 1, "C"), fl, fl, fl)),
        "softmax_xent int32": (softmax.softmax_xent, (A2, T.Array(T.int32, 1, "C"), A2, A2,
                                                      T.Array(T.int32, 1, "C"), fl, fl, fl)),
        "bn_fwd_stats": (norm.make_bn_fwd_stats(nbt), (A1, i, i) + (fl,) * 5 + (b, b) + (A1,) * 4 + (fl, fl)),
        "bn_fwd_eval_stats": (norm.bn_fwd_eval_stats, (A1, A1, fl, fl, A1, A1)),
        "bn_fwd_apply": (norm.bn_fwd_apply, (A1,) * 5 + (b, b, i, i, A1)),
        "bn_bwd_reduce": (norm.make_bn_bwd_reduce(nbt), (A1,) * 5 + (b, i, i, fl, fl, fl) + (A1,) * 4),
        "bn_bwd_dx": (norm.bn_bwd_dx, (A1,) * 5 + (b, A1, A1, b, i, i, A1)),
        "sgd_update": (optim.sgd_update, (A1, A1, A1) + (fl,) * 4 + (b,) * 4),
        "adam_update": (optim.adam_update, (A1,) * 4 + (fl,) * 8 + (b,)),
    }
    for name, (kernel, sig) in cases.items():
        cres = compiler.compile_cuda(getattr(kernel, "py_func", kernel), T.void, sig, cc=(8, 0))
        if fl == T.float32:
            f64 = sorted(v for v, t in cres.type_annotation.typemap.items() if t == T.float64)
            doubles = len(re.findall(r"\bdouble\b", cres.library.get_llvm_str()))
            if f64 or doubles:
                bad.append(f"{name}: float64 values {f64}, {doubles} 'double' in the LLVM IR")
print("\n".join(bad) if bad else "OK")
sys.exit(1 if bad else 0)
'''


def test_kernels_type_for_cuda_without_float64():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", _TYPE_CHECK], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK"
