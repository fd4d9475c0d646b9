"""Traps only a GPU would spring, closed and checked here: the emulated device array and capture, the
captured step with device labels, the compiled-module cache key, grid-stride index overflow, and the
pinned double-buffered batch feeder."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from cupy_support import EMULATED, device, host
from gpucnn import backend
from gpucnn import functional as F
from gpucnn.backends.cupy import _runtime as rt
from gpucnn import capture as cgraph
from gpucnn.backends.cupy import transfer
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D
from helpers import assert_close

emulated_only = pytest.mark.skipif(not EMULATED, reason="checks the emulator itself")


# --------------------------------------------------------------------------- the emulated device array

@emulated_only
def test_device_arrays_refuse_implicit_host_conversion_like_cupy():
    a = device(np.arange(6, dtype=np.float32).reshape(2, 3))
    for implicit in (np.asarray, lambda v: np.array(v), lambda v: np.copyto(np.empty((2, 3), np.float32), v),
                     lambda v: np.float32(1) + v, lambda v: list(v)):
        with pytest.raises(TypeError):
            implicit(a)
    np.testing.assert_array_equal(a.get(), np.arange(6).reshape(2, 3))  # the explicit copy
    host_array = np.ones(3, np.float32)
    b = device(host_array)
    host_array[0] = 5  # an upload is a copy: the device array never aliases host memory
    assert b.get()[0] == 1


@emulated_only
def test_a_kernel_refuses_a_host_array():
    from gpucnn.backends.cupy import elementwise
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="host NumPy array"):
        elementwise.K.launch("relu_fwd<1>", (1,), (32,), (x, rt.empty((8,)), rt.i32(8)))


@emulated_only
def test_host_reads_uploads_and_syncs_inside_a_capture_raise():
    a = device(np.ones(4, np.float32))
    for read in (lambda: a.get(), lambda: float(a[:1]), lambda: F.asarray(np.ones(3, np.float32)),
                 lambda: a.set(np.zeros(4, np.float32)), lambda: rt.xp.synchronize(), lambda: rt.xp.Event().synchronize()):
        with backend.use_backend("cupy"):
            with pytest.raises(rt.xp.CaptureError, match="during a stream capture"):
                rt.Graph(read)
        assert not rt.xp.capturing()  # the failed capture was ended
    a.get()  # and outside a capture the same read works


@emulated_only
def test_a_capture_records_fills_and_device_copies_and_replays_them():
    a, b = device(np.zeros(4, np.float32)), device(np.arange(4, dtype=np.float32))

    def body():
        a.fill(1)
        a[1:3] = b[2:]

    g = rt.Graph(body)
    assert a.get().tolist() == [0, 0, 0, 0] and g.operations == 2  # recorded, not run
    g.launch()
    assert a.get().tolist() == [1, 2, 3, 1]


def test_a_failed_capture_raises_its_own_error_not_the_end_capture_one():
    class Planted(Exception):
        pass

    def body():
        raise Planted("the real reason")

    with backend.use_backend("cupy"):
        with pytest.raises(Planted, match="the real reason"):
            rt.Graph(body)
        rt.Graph(lambda: None)  # the stream is usable again: a new capture begins


def test_captures_run_on_a_non_blocking_stream_of_their_own():
    with backend.use_backend("cupy"):
        g = rt.Graph(lambda: None)
    if EMULATED:
        assert g.stream.non_blocking
    else:  # pragma: no cover - GPU only
        import cupy
        assert g.stream is not cupy.cuda.Stream.null and g.stream.ptr


# --------------------------------------------------------------------------- the captured step, device data

def small(seed=0):
    return gpucnn.Sequential([Conv2D(4, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten(),
                              Dense(3, activation="softmax")], input_shape=(1, 6, 6), seed=seed)


def _batches(n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((size, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, size)) for _ in range(n)]


def test_captured_step_on_device_batches_and_labels_matches_host_batches():
    """The bench closure and a user's device pipeline pass CuPy labels to the captured step; its label
    check must not read them on the host (illegal inside the capture). Same weights as host batches."""
    results = []
    for on_device in (False, True):
        m = small()
        with backend.use_backend("cupy"):
            m.compile(gpucnn.Adam(lr=1e-2))
            step = cgraph.CapturedStep(m, 8)
            for xb, yb in _batches():
                step.step(*((device(xb), device(yb)) if on_device else (xb, yb)))
            assert step.replays == 2
            results.append(m.state_dict())
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])


@emulated_only
def test_a_planted_host_read_inside_the_captured_step_is_caught(monkeypatch):
    """What the old label check did (a host copy of device labels inside the step) now fails the capture."""
    m = small()
    real = F.softmax_cross_entropy

    def reads_labels_on_the_host(logits, labels):
        F.to_numpy(labels).max()
        return real(logits, labels)

    with backend.use_backend("cupy"):
        m.compile(gpucnn.Adam())
        step = cgraph.CapturedStep(m, 8)
        monkeypatch.setattr(cgraph.F, "softmax_cross_entropy", reads_labels_on_the_host)
        data = _batches()
        step.step(*data[0])
        step.step(*data[1])  # the two eager steps read freely
        with pytest.raises(rt.xp.CaptureError, match="device-to-host"):
            step.step(*data[2])


def test_a_bad_label_in_the_captured_step_raises_at_the_end_of_the_epoch_naming_the_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 6, 6)).astype(np.float32)
    y = device(rng.integers(0, 3, 40))
    bad = np.asarray(host(y)).copy()
    m = small()
    with backend.use_backend("cupy"):
        m.compile(gpucnn.Adam())
        step = cgraph.CapturedStep(m, 8)
        F.clear_label_errors()
        for i in range(5):
            labels = bad[8 * i: 8 * i + 8].copy()
            if i == 3:
                labels[5] = 3  # one past the classes, in a replayed step
            step.step(device(x[8 * i: 8 * i + 8]), device(labels))
        step.take_stats()
        with pytest.raises(ValueError, match=r"label 3 at row 5 of loss call 3 .*outside \[0, 3\)"):
            F.check_label_errors()


# --------------------------------------------------------------------------- compiled-module cache key

def test_the_module_source_changes_when_a_header_or_the_version_changes(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    shutil.copytree(rt.kernels_dir(), kernels)
    monkeypatch.setattr(rt, "kernels_dir", lambda: kernels)
    before = rt.module_source("softmax")
    assert before.startswith((kernels / "softmax.cu").read_text())
    for header in ("common.cuh", "gemm.cuh"):
        path = kernels / header
        original = path.read_text()
        path.write_text(original + "\n// an edit\n")
        assert rt.module_source("softmax") != before, f"an edit of {header} must change what CuPy compiles"
        path.write_text(original)
    assert rt.module_source("softmax") == before
    from gpucnn import _version
    monkeypatch.setattr(_version, "__version__", "99.0")
    assert rt.module_source("softmax") != before


def test_kernels_are_found_in_a_checkout_without_the_installed_package(monkeypatch):
    from importlib import resources

    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", not_installed)
    here = rt.kernels_dir()
    assert here == Path(__file__).resolve().parents[1] / "kernels" and (here / "softmax.cu").is_file()


# --------------------------------------------------------------------------- grid-stride index arithmetic

STUB = """
#define __device__
#define __forceinline__ inline
struct U3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
U3 blockIdx, blockDim, gridDim, threadIdx;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#define GPUCNN_HOSTEMU
namespace hostemu { void mma_m16n8k8_tf32(float (&)[4], const unsigned (&)[4], const unsigned (&)[2]);
                    void cp_async(float*, const float*, int, bool); void cp_async_wait_all(); }
template <class T> T __shfl_down_sync(unsigned, T, unsigned, int = 32);
void __syncthreads();
float __int_as_float(int);
unsigned __float_as_uint(float);
float fmaxf(float, float);
"""

OLD_LOOP = """
#undef GRID_STRIDE_LOOP
#define GRID_STRIDE_LOOP(i, n) \\
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
"""

MAIN = """
#include <cstdio>
int main() {
    // the last thread of the largest grid the launchers make, over the most elements they accept
    gridDim = {65535, 1, 1}; blockDim = {1024, 1, 1}; blockIdx = {65534, 0, 0}; threadIdx = {1023, 0, 0};
    const int n = 2147483647;
    long long count = 0, last = -1, rows = 0;
    GRID_STRIDE_LOOP(i, n) {
        if (i < 0) { std::printf("negative index %d\\n", i); return 3; }  // the old int counter wrapped
        ++count;
        last = i;
    }
    WARP_ROW_LOOP(r, n) {
        if (r < 0) return 4;
        ++rows;
    }
    std::printf("%lld %lld %lld\\n", count, last, rows);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("old", [False, True], ids=["fixed", "old_int_loop"])
def test_grid_stride_loops_do_not_overflow_near_2_to_the_31(tmp_path, old):
    src = tmp_path / "loop.cpp"
    src.write_text(STUB + f'#include "{rt.kernels_dir() / "common.cuh"}"\n' + (OLD_LOOP if old else "") + MAIN)
    exe = tmp_path / "loop"
    build = subprocess.run(["g++", "-std=c++17", "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all",
                            str(src), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    first, stride = 65534 * 1024 + 1023, 65535 * 1024
    if old:  # the negative control: the int counter wraps to a negative index past 2^31
        assert run.returncode == 3 and "negative index" in run.stdout
        return
    assert run.returncode == 0, run.stderr
    count, last, rows = (int(v) for v in run.stdout.split())
    assert count == -(-(2147483647 - first) // stride) and last == first + (count - 1) * stride
    warp, warps = first >> 5, stride >> 5
    assert rows == -(-(2147483647 - warp) // warps)


# --------------------------------------------------------------------------- the batch feeder

def test_fit_on_cupy_feeds_batches_through_the_double_buffered_feeder(monkeypatch):
    """Every batch of every epoch comes through the feeder, in data.batches' order, alternating between
    its two slots; the model trains exactly as when the batches are uploaded one by one."""
    seen = []
    real_issue = transfer.BatchFeeder._issue

    def spy(self, i, idx):
        seen.append((i % self.DEPTH, tuple(idx)))
        return real_issue(self, i, idx)

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((20, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 20)
    models = []
    for feed in (True, False):
        m = small()
        with backend.use_backend("cupy"):
            if feed:
                monkeypatch.setattr(transfer.BatchFeeder, "_issue", spy)
            else:
                monkeypatch.setattr(type(backend.get_backend("cupy")), "batch_feeder", None)
            m.compile(gpucnn.Adam(lr=1e-2))
            m.fit(x, y, epochs=2, batch_size=8, seed=3, verbose=0)
        monkeypatch.undo()
        models.append(m.state_dict())
    assert [s for s, _ in seen] == [0, 1, 0] * 2
    order = np.random.default_rng(3)
    expected = []
    for _ in range(2):
        seed = int(order.integers(2**63))
        perm = np.random.default_rng(seed).permutation(20)
        expected += [tuple(perm[s:s + 8]) for s in range(0, 20, 8)]
    assert [idx for _, idx in seen] == expected
    assert all(np.array_equal(models[0][k], models[1][k]) for k in models[0])


def test_feeder_batches_equal_the_host_rows():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((11, 2, 3)).astype(np.float32), rng.integers(0, 5, 11)
    with backend.use_backend("cupy"):
        feeder = transfer.BatchFeeder(x, y, 4)
        order = rng.permutation(11)
        got = [(host(xb), host(yb), np.array(yh)) for xb, yb, yh in feeder.epoch(order)]
    assert [len(g[0]) for g in got] == [4, 4, 3] and feeder.uploads == 3
    for (xb, yb, yh), s in zip(got, range(0, 11, 4)):
        assert_close(xb, x[order[s:s + 4]], rtol=0, atol=0)
        assert np.array_equal(yb, y[order[s:s + 4]]) and np.array_equal(yh, yb)

