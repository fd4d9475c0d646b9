"""The shared-memory wavefront counter (kernels/hostemu.h's GPUCNN_HOSTEMU_HOOKS, gpucnn.perf.banks): planted
kernels with known costs, and the counts of the real GEMM kernels that an outside read predicted.

Each planted kernel is one warp making one shared access whose cost the hardware's rules fix: conflict-free,
broadcast, 2-, 8- and 32-way conflicts, LDS.128 unpaired, paired by lane ^ 1 and by lane ^ 2, conflicted,
and cp.async destinations of 4 and 16 bytes (the weight-gradient loaders' 8-way pattern among them).
"""
import shutil

import numpy as np
import pytest

from gpucnn.backends.cupy import hostemu

pytestmark = pytest.mark.skipif(hostemu.compiler() is None, reason="the counting build needs g++")

# name: (the access, (kind, width, wavefronts, ideal)); kinds as banks.KINDS: 0 LDS, 1 STS, 2 cp.async
PLANTED = {
    "free": ("acc = s[l];", (0, 4, 1, 1)),
    "broadcast": ("acc = s[7];", (0, 4, 1, 1)),
    "two_way": ("acc = s[2 * l];", (0, 4, 2, 1)),
    "eight_way": ("acc = s[8 * l];", (0, 4, 8, 1)),
    "all_way": ("acc = s[32 * l];", (0, 4, 32, 1)),
    "half_broadcast": ("acc = s[l % 16];", (0, 4, 1, 1)),
    "store_two_way": ("s[2 * l] = acc + 1.f; __syncthreads(); acc = s[l ^ 1];", (1, 4, 2, 1)),
    "lds128": ("{ float4 v = lds128(s + 4 * l); acc = v.x + v.y + v.z + v.w; }", (0, 16, 4, 4)),
    "lds128_pair1": ("{ float4 v = lds128(s + 4 * (l >> 1)); acc = v.x + v.y + v.z + v.w; }", (0, 16, 2, 2)),
    "lds128_pair2": ("{ float4 v = lds128(s + 4 * ((l & 1) | (l >> 2 << 1))); acc = v.x + v.y + v.z + v.w; }",
                     (0, 16, 2, 2)),
    "lds128_broadcast": ("{ float4 v = lds128(s + 16); acc = v.x + v.y + v.z + v.w; }", (0, 16, 2, 2)),
    "lds128_two_way": ("{ float4 v = lds128(s + 8 * l); acc = v.x + v.y + v.z + v.w; }", (0, 16, 8, 4)),
    "cp_async4": ("cp_async4(smem_at(smem_address(s), l), g + l, true); cp_async_wait_all();", (2, 4, 1, 1)),
    "cp_async16": ("cp_async16(smem_at(smem_address(s), 4 * l), g + 4 * l, true); cp_async_wait_all();",
                   (2, 16, 4, 4)),
    "cp_async4_eight_way": ("cp_async4(smem_at(smem_address(s), (l % 8) * 32 + l / 8), g + l, true);"
                            " cp_async_wait_all();", (2, 4, 8, 1)),
}


def _source() -> str:
    kernels = []
    for name, (access, _) in PLANTED.items():
        kernels.append(f"""
extern "C" __global__ void planted_{name}(const float* __restrict__ g, float* __restrict__ out) {{
    __shared__ __align__(16) float s[32 * 40];
    const int l = threadIdx.x;
    for (int i = l; i < 32 * 40; i += 32) s[i] = g[i];  // (never-written memory could be folded to 0)
    __syncthreads();
    float acc = g[l];
    {access}
    out[l] = acc;
}}""")
    return '#include "common.cuh"\n' + "\n".join(kernels)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from gpucnn.backends.cupy._runtime import kernels_dir
    root = tmp_path_factory.mktemp("banks")
    shutil.copy(kernels_dir() / "common.cuh", root / "common.cuh")
    (root / "planted.cu").write_text(_source())
    return hostemu.Module(root / "planted.cu", [f"planted_{n}" for n in PLANTED], instrumented=True)


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_access_costs_its_known_wavefronts(planted, name):
    g = np.arange(32 * 40, dtype=np.float32)
    out = np.zeros(32, np.float32)
    planted.count_begin(1)
    planted.get_function(f"planted_{name}")((1,), (32,), (g, out))
    sites = planted.count_sites()
    kind, width, wavefronts, ideal = PLANTED[name][1]
    # the planted access: one request of its kind and width (the filling loop's stores make 40 requests)
    ours = [s for s in sites if (s[2], s[1], s[3]) == (kind, width, 1)]
    assert len(ours) == 1, (name, sites)
    _, _, _, requests, got, got_ideal, lanes = ours[0]
    assert (got, got_ideal, lanes) == (wavefronts, ideal, 32), (name, ours)
    fill = [s for s in sites if s[3] == 40]
    assert len(fill) == 1 and fill[0][1:3] == (4, 1) and fill[0][4:6] == (40, 40)  # conflict-free stores


def test_only_the_first_blocks_run_when_counting(planted):
    """Counting runs the first CTA of a grid only: a 3-block grid records one block's requests."""
    g = np.arange(32 * 40, dtype=np.float32)
    out = np.zeros(32, np.float32)
    planted.count_begin(1)
    planted.get_function("planted_eight_way")((3,), (32,), (g, out))
    assert sorted(s[3] for s in planted.count_sites()) == [1, 40]  # the access, the filling loop
    planted.count_begin(0)  # 0: every block
    planted.get_function("planted_eight_way")((3,), (32,), (g, out))
    assert sorted(s[3] for s in planted.count_sites()) == [3, 120]


def test_the_counter_sees_what_an_outside_read_found():
    """Issue 19's read of the code, now counted from the code itself: the weight-gradient loaders' cp.async
    stores are 8-way conflicted, the FP32 A-fragment LDS.128 takes 4 wavefronts (no lane pairing) and the B
    fragment 2, the linear layer's K-contiguous staging stores 4-way (cifar10_vgg's step, batch 128)."""
    from gpucnn.perf import banks
    from gpucnn.perf.launches import record_step
    launches = record_step("cifar10_vgg", 128, 132)
    wanted = ("conv2d_wgrad<64, 64", "linear_dgrad<128, 64, false, true>")
    counts = banks.count_step(launches, needs=lambda la: la.kernel.startswith(wanted))
    wgrad = next(c for k, c in counts.items() if k.startswith(wanted[0]))
    loads = {s.where: s for s in wgrad.sites if s.instruction == "LDS.128"}
    assert sorted(round(s.per_request, 2) for s in loads.values()) == [2.0, 4.0]
    stores = [s for s in wgrad.sites if s.instruction == "cp.async.4"]
    assert stores and all(s.per_request == 8.0 and s.ideal == s.requests for s in stores)
    assert wgrad.per_step > wgrad.ideal_per_step > 0
    linear = counts[wanted[1]]
    staging = [s for s in linear.sites if s.instruction == "STS.32"]
    assert len(staging) == 4 and all(s.per_request == 4.0 for s in staging)
