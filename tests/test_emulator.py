"""The CuPy emulator (kernels/hostemu.h) closer to a device: each mode catches a planted bug that plain C++ on a
CPU would let pass, and the library's own kernels pass every mode (tests/test_cupy_schedules.py runs the thread
and block orders over most kernels; the allocation check runs here on the same workload).

- shared memory is poisoned at each block's start: a read before any write gives NaN, not a static zero;
- GPUCNN_HOSTEMU_ORDER=shuffle runs the blocks of a grid in a random order, and lands each cp.async at a
  random moment between its issue and its wait;
- GPUCNN_HOSTEMU_CHECK=1 (the instrumented build): a global access outside every live allocation is an
  error naming the kernel.
"""
import numpy as np
import pytest

from cupy_support import EMULATED

if not EMULATED:
    pytest.skip("emulator modes (on a GPU: compute-sanitizer's initcheck, racecheck, memcheck)", allow_module_level=True)

from gpucnn.backends.cupy import _runtime, hostemu  # noqa: E402

PLANTED = r"""
#include "common.cuh"
// reads shared memory no thread wrote (uninitialised on a GPU)
extern "C" __global__ void read_unwritten(float* out) {
    __shared__ float s[64];
    out[threadIdx.x] = s[threadIdx.x];
}
// block b takes block b-1's result: right only if the blocks run in order (no GPU promises one)
extern "C" __global__ void chain(float* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? 1.f : out[blockIdx.x - 1] + 1.f;
}
// reads a neighbour's cp.async destination before the neighbour waited for its copy
extern "C" __global__ void early_read(const float* x, float* out) {
    __shared__ __align__(16) float s[64];
    const int t = threadIdx.x;
    s[t] = -1.f;
    __syncthreads();
    cp_async4(smem_address(&s[t]), x + t, true);
    __syncthreads();
    out[t] = s[(t + 1) % 64];
    cp_async_wait_all();
}
// reads one element past the end of its input
extern "C" __global__ void past_the_end(const float* x, float* out, int n) {
    out[threadIdx.x] = x[threadIdx.x + n];
}
"""
NAMES = ["read_unwritten", "chain", "early_read", "past_the_end"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("emulator")
    src = root / "planted.cu"
    src.write_text(PLANTED.replace('#include "common.cuh"', f'#include "{_runtime.kernels_dir() / "common.cuh"}"'))
    return {checked: hostemu.Module(src, NAMES, instrumented=checked) for checked in (False, True)}


def test_shared_memory_starts_poisoned(planted):
    out = np.zeros(64, np.float32)
    planted[False].get_function("read_unwritten")((2,), (64,), (out,))
    assert np.isnan(out).all()  # was 0.0 from the static array's zero initialisation


def test_blocks_run_in_a_shuffled_order(planted, monkeypatch):
    run = planted[False].get_function("chain")
    out = np.zeros(16, np.float32)
    run((16,), (32,), (out,))
    assert out.tolist() == list(range(1, 17))  # in order, the bug hides
    monkeypatch.setenv("GPUCNN_HOSTEMU_ORDER", "shuffle")
    wrong = 0
    for seed in range(1, 6):
        monkeypatch.setenv("GPUCNN_HOSTEMU_SEED", str(seed))
        out = np.zeros(16, np.float32)
        run((16,), (32,), (out,))
        wrong += out.tolist() != list(range(1, 17))
    assert wrong  # shuffled, it shows


def test_cp_async_lands_at_a_random_moment(planted, monkeypatch):
    run = planted[False].get_function("early_read")
    x = np.arange(1, 65, dtype=np.float32)
    out = np.zeros(64, np.float32)
    run((1,), (64,), (x, out))
    # landing at the wait, in order: a thread reads its right neighbour before the neighbour waited (the
    # last thread reads thread 0, which had finished)
    assert (out[:63] == -1).all() and out[63] == 1
    monkeypatch.setenv("GPUCNN_HOSTEMU_ORDER", "shuffle")
    monkeypatch.setenv("GPUCNN_HOSTEMU_SEED", "3")
    run((1,), (64,), (x, out))
    landed = out[:63] != -1
    assert landed.any() and not landed.all()  # some copies landed before their wait, some did not
    assert np.array_equal(out[:63][landed], x[1:][landed])


def test_a_read_outside_every_allocation_fails_naming_the_kernel(planted, monkeypatch):
    x = hostemu.guarded_empty((64,))
    x[:] = 1.0
    out = hostemu.guarded_empty((64,))
    run = planted[True].get_function("past_the_end")
    run((1,), (64,), (x, out, np.int32(0)))  # in bounds: fine, checked or not
    monkeypatch.setenv("GPUCNN_HOSTEMU_CHECK", "1")
    run((1,), (64,), (x, out, np.int32(0)))
    with pytest.raises(hostemu.EmulationError, match=r"past_the_end <<<.*a global read of 4 bytes at 0x[0-9a-f]+ is "
                                                     r"outside every live allocation"):
        run((1,), (64,), (x, out, np.int32(1)))  # x[64]: the canary margin, not the array
    monkeypatch.delenv("GPUCNN_HOSTEMU_CHECK")
    run((1,), (64,), (x, out, np.int32(1)))  # unchecked: reads the margin's canary silently
    assert np.isnan(out[-1])


def test_the_library_passes_the_allocation_check(monkeypatch):
    """Most kernels (tests/test_cupy_schedules.workload) in the instrumented build with every global access
    checked: no access outside a live allocation, and the same bits as the plain build."""
    from test_cupy_schedules import workload
    base = workload()
    monkeypatch.setenv("GPUCNN_HOSTEMU_CHECK", "1")
    checked = workload()
    for k in base:
        assert np.array_equal(base[k], checked[k], equal_nan=True), k
