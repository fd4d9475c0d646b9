"""A poor man's racecheck: the cupy backend's kernels give bit-identical results whatever order the
emulator runs the threads of a block in between barriers (GPUCNN_HOSTEMU_ORDER = forward, reverse,
shuffle). A kernel reading shared memory another thread writes without a __syncthreads() between
them depends on that order (the control kernel below shows the check catches one). Emulator only:
on a GPU, compute-sanitizer --tool racecheck does this job.
"""
import numpy as np
import pytest

import gpucnn
from cupy_support import EMULATED, host, run

if not EMULATED:
    pytest.skip("thread orders are an emulator setting; on a GPU use compute-sanitizer", allow_module_level=True)

from gpucnn.backends.cupy import hostemu  # noqa: E402

ORDERS = ["reverse", "shuffle"]


def workload(seed=0):
    """One call of most kernels, on small odd shapes; returns every output on the host."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w, b = f(2, 3, 9, 7), f(5, 3, 3, 3), f(5)
    out = {}
    for tf32 in (False, True):
        with gpucnn.config.tf32(tf32):
            y = run("conv2d_relu", x, w, b, (2, 1), 1)
            dx, dw, db = run("conv2d_backward", f(*y.shape), x, w, (2, 1), 1)
            xl, wl = f(7, 37), f(11, 37)
            out.update({f"conv{tf32}": y, f"dx{tf32}": dx, f"dw{tf32}": dw, f"db{tf32}": db,
                        f"linear{tf32}": run("linear", xl, wl, f(11))})
            out.update(zip((f"ldx{tf32}", f"ldw{tf32}", f"ldb{tf32}"), run("linear_backward", f(7, 11), xl, wl)))
    p = f(2, 4, 7, 9)
    y, idx = run("max_pool2d", p, 2, return_indices=True)
    out.update(pool=y, pool_bwd=run("max_pool2d_backward", f(*y.shape), p, 2, indices=idx),
               avg=run("avg_pool2d", p, 3, 2), softmax=run("softmax", f(6, 40)), logsm=run("log_softmax", p, 1))
    loss, dl = run("softmax_cross_entropy", f(70, 10), rng.integers(0, 10, 70))
    out.update(loss=loss, dlogits=dl)
    bx = f(3, 4, 5, 6)
    with gpucnn.use_backend("cupy"):
        rm, rv = gpucnn.functional.asarray(f(4)), gpucnn.functional.asarray(np.abs(f(4)))
        bn = gpucnn.functional.batch_norm(bx, rm, rv, f(4), f(4), training=True)
        out.update(bn=bn[0], bn_bwd=gpucnn.functional.batch_norm_backward(f(*bx.shape), bx, f(4), bn[1], bn[2])[0])
    return {k: host(v).copy() for k, v in out.items()}


@pytest.mark.parametrize("order", ORDERS)
def test_results_do_not_depend_on_the_thread_order(order, monkeypatch):
    base = workload()
    monkeypatch.setenv("GPUCNN_HOSTEMU_ORDER", order)
    monkeypatch.setenv("GPUCNN_HOSTEMU_SEED", "7")
    other = workload()
    for k in base:
        assert np.array_equal(base[k], other[k], equal_nan=True), f"{k} depends on the thread order ({order})"


RACY = r"""
// sums a block's values through shared memory, with the barrier after the writes missing
__global__ void racy_sum(const float* x, float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x];
    if (threadIdx.x == 0) {  // no __syncthreads() above: reads slots others may not have written yet
        float v = 0.f;
        for (int i = 0; i < 64; ++i) v += s[i];
        out[0] = v;
    }
}
"""


def test_the_check_catches_a_missing_barrier(tmp_path, monkeypatch):
    src = tmp_path / "racy.cu"
    src.write_text(RACY)
    fn = hostemu.Module(src, ["racy_sum"]).get_function("racy_sum")
    x = np.arange(1, 65, dtype=np.float32)
    results = {}
    for order in ("forward", "reverse"):
        monkeypatch.setenv("GPUCNN_HOSTEMU_ORDER", order)
        out = np.zeros(1, np.float32)
        fn((1,), (64,), (x, out))
        results[order] = out[0]
    assert results["forward"] != results["reverse"]


ASYNC = r"""
#include "common.cuh"
// copies x into shared memory with cp.async, then reads it back: with the wait (WAIT 1) or without
template <int WAIT>
__global__ void async_copy(const float* x, float* out) {
    __shared__ __align__(16) float s[64];
    s[threadIdx.x] = -1.f;
    __syncthreads();
    cp_async4(smem_address(&s[threadIdx.x]), x + threadIdx.x, threadIdx.x % 2 == 0);  // odd lanes: zero-fill
    if (WAIT) cp_async_wait_all();
    out[threadIdx.x] = s[threadIdx.x];
    if (!WAIT) cp_async_wait_all();  // the copy lands only now, after the read
}
"""


def test_cp_async_lands_at_the_wait(tmp_path):
    """The emulator's cp.async writes shared memory when the thread waits, not when it is issued (a device
    gives no earlier guarantee): a kernel that reads before waiting sees the old value, as it may on a GPU;
    src-size 0 zero-fills."""
    from gpucnn.backends.cupy import _runtime
    src = tmp_path / "async.cu"
    src.write_text(ASYNC.replace('#include "common.cuh"', f'#include "{_runtime.kernels_dir() / "common.cuh"}"'))
    module = hostemu.Module(src, ["async_copy<1>", "async_copy<0>"])
    x = np.arange(1, 65, dtype=np.float32)
    waited, early = np.zeros(64, np.float32), np.zeros(64, np.float32)
    module.get_function("async_copy<1>")((1,), (64,), (x, waited))
    module.get_function("async_copy<0>")((1,), (64,), (x, early))
    assert np.array_equal(waited, np.where(np.arange(64) % 2 == 0, x, 0))
    assert np.all(early == -1)
