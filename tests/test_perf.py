"""gpucnn.perf, the static kernel model behind `gpucnn kernels`: occupancy against the CUDA occupancy
calculator, the main loop of a planted kernel found and counted, the launches of a training step, the
report's last line and its determinism. Tests that compile are skipped, saying why, without nvcc or
cuobjdump/nvdisasm (pip install 'gpucnn[perf]'); compiled results are cached (~/.cache/gpucnn/perf).
"""
import re

import pytest

from gpucnn import cli, perf
from gpucnn.perf import gpus, sass
from gpucnn.perf.launches import record_step

MISSING = sass.missing()
needs_tools = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# The CUDA Occupancy Calculator's answers (cuda_occupancy.h / the spreadsheet's rules, default carveout):
# registers per warp rounded up to 256 and allocated per sub-partition (65536 / 4 each), shared memory
# per block + 1 KB reserved in 128-byte units against 228 KB (9.0) or 164 KB (8.0), 64 warps and 32 CTAs.
OCCUPANCY_CASES = [
    # gpu,   threads, regs, smem,  CTAs/SM, warps/SM, limit
    ("h200", 256, 32, 0, 8, 64, "warps"),                  # 32 regs: 100% occupancy
    ("h200", 256, 64, 12288, 4, 32, "registers"),          # 64 regs: 50%
    ("h200", 256, 128, 0, 2, 16, "registers"),             # 128 regs: 25%
    ("h200", 256, 143, 18432, 1, 8, "registers"),          # 143 -> 4608 per warp: 3 warps per sub-partition
    ("h200", 256, 255, 0, 1, 8, "registers"),              # 255 -> 8192 per warp: 2 warps per sub-partition
    ("a100", 256, 72, 0, 3, 24, "registers"),              # 2304 per warp: 7 per sub-partition, 28 warps
    ("h100", 32, 16, 0, 32, 32, "blocks"),                 # one-warp blocks: the 32-CTA limit
    ("h100", 128, 32, 49152, 4, 16, "shared memory"),      # (48 KB + 1 KB) -> 233472 // 50176 = 4
    ("a100", 128, 32, 49152, 3, 12, "shared memory"),      # 167936 // 50176 = 3
    ("h200", 1024, 255, 0, 0, 0, "registers"),             # 255 x 32 x 32 warps > 65536: cannot launch
]


@pytest.mark.parametrize("gpu,threads,regs,smem,blocks,warps,limit", OCCUPANCY_CASES)
def test_occupancy_matches_the_occupancy_calculator(gpu, threads, regs, smem, blocks, warps, limit):
    occ = gpus.occupancy(gpus.GPUS[gpu], threads, regs, smem)
    assert (occ.blocks, occ.warps, occ.limit) == (blocks, warps, limit)


def test_symbol_prefix_is_the_itanium_mangling_of_the_instance():
    assert sass.symbol_prefix("conv2d_fwd<128, 64, false, true>") == "_Z10conv2d_fwdILi128ELi64ELb0ELb1EE"
    assert sass.symbol_prefix("max_pool_bwd<long long>") == "_Z12max_pool_bwdIxE"
    assert sass.symbol_prefix("splitk_reduce") == "splitk_reduce"


PLANTED = r"""
// a loop of plain adds first (no FFMA: must not be taken for the main loop), then the main loop:
// exactly 16 independent FFMA and one global load per iteration (the outer loop is kept rolled)
extern "C" __global__ void planted(const float* __restrict__ a, float* __restrict__ out, int n, int m) {
    float s = 0.f;
#pragma unroll 1
    for (int i = 0; i < m; ++i) s += a[i] * 0.f + 1.f;
    float acc[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[j] = a[j + threadIdx.x];
    const float y = a[threadIdx.x + 64];
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        const float x = a[i + blockIdx.x];
#pragma unroll
        for (int j = 0; j < 16; ++j) acc[j] = fmaf(acc[j], x, y);
    }
    float r = s;
#pragma unroll
    for (int j = 0; j < 16; ++j) r += acc[j];
    out[threadIdx.x] = r;
}
"""


@needs_tools
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_main_loop_of_a_planted_kernel_has_its_16_ffma(tmp_path, arch):
    built = sass.build(PLANTED, tmp_path, [], arch)
    code = sass.functions(built["sass"])
    kernel = sass.analyze("planted", code["planted"])
    assert len(kernel.loops) >= 2, kernel.loops
    assert kernel.mix["FFMA"] == 16 and kernel.mix["HMMA"] == 0
    assert kernel.mix["LDG"] == 1 and kernel.mix["BAR"] == 0
    assert kernel.global_words == 1
    res = sass.resources(built)["planted"]
    assert res.registers > 16 and res.spill_stores == 0 and res.shared == 0


def test_the_launches_of_a_training_step_come_from_the_launchers():
    launches = record_step("cifar10_vgg", 128, sms=132)
    directions = {la.direction for la in launches}
    assert {"forward", "data grad", "weight grad", "bias grad", "softmax-xent", "sgd step"} <= directions
    fwd = [la for la in launches if la.kernel.startswith("conv2d_fwd")]
    bm, bn = (int(v) for v in fwd[1].kernel.split("<")[1].split(",")[:2])
    # conv2d_1: 32 -> 32 channels, 3x3, 32x32 images: M = 128*32*32 pixels, N = 32, K = 288 = 18 steps of 16
    assert len(fwd) == 6 and fwd[1].gemm == {"M": 128 * 32 * 32, "N": 32, "K": 288, "bm": bm, "bn": bn,
                                             "ksteps": 18, "bk": 16, "macs_cta": 18 * 16 * bm * bn}
    # the first layer (3 channels) convolves directly: the GEMM it computes, and its busiest block's work
    assert fwd[0].kernel == "conv2d_fwd_direct<3>" and fwd[0].grid == (4, 128)
    assert fwd[0].gemm == {"M": 128 * 32 * 32, "N": 32, "K": 27, "macs_cta": 8 * 32 * 32 * 27}
    assert fwd[1].grid == (128 * 32 * 32 // bm, 32 // bn, 1) and fwd[1].flops == 2 * 128 * 32 * 32 * 32 * 288
    assert fwd[1].block == (bm * bn // 64,)  # 8x8 outputs a thread
    # split-K follows the GPU's SM count (the launcher's gemm_plan), not the emulator's 4
    wgrad = [la for la in launches if la.kernel.startswith("conv2d_wgrad")]
    few = [la for la in record_step("cifar10_vgg", 128, sms=4) if la.kernel.startswith("conv2d_wgrad")]
    assert [la.grid[-1] for la in wgrad] != [la.grid[-1] for la in few]
    from gpucnn.backends.cupy import _runtime
    assert _runtime.sm_count() == 4  # restored
    tf32 = [la.kernel for la in record_step("mnist_cnn", 16, sms=132, tf32=True) if la.gemm]
    assert tf32 and all(k.split("<")[1].rstrip(">").split(", ")[2] == "true" for k in tf32)  # <BM, BN, TF32, ...>


LAST = re.compile(r"^mnist_cnn training step, batch 16, H200 (FP32|TF32) \(model\): \d+\.\d{3} ms, "
                  r"GEMMs at \d+\.\d% of peak$")


@needs_tools
def test_report_last_line_and_determinism():
    rows, gpu = perf.run("mnist_cnn", 16, "h200")
    text = perf.format_report(rows, gpu, "mnist_cnn", 16, False)
    assert LAST.match(text.splitlines()[-1]), text.splitlines()[-1]
    assert "FP32" in text.splitlines()[-1]
    assert "NOT A MEASUREMENT" in text
    rows2, _ = perf.run("mnist_cnn", 16, "h200")
    assert perf.format_report(rows2, gpu, "mnist_cnn", 16, False) == text
    for r in rows:
        assert r.predicted_us == max(r.bounds().values()) == r.bounds()[r.bound] > 0
        assert r.predicted_us >= gpu.launch_eager_us and r.bound in perf.model.BOUNDS
        assert r.occ.blocks >= 1 and r.res.spill_stores == 0
    gemm = [r for r in rows if r.launch.gemm]
    assert gemm and all(r.kernel.mix["FFMA"] > 0 and 0 < r.peak_pct < 100 for r in gemm)


@needs_tools
def test_cli_kernels_prints_the_report(capsys):
    assert cli.main(["kernels", "--model", "mnist_cnn", "--batch", "16", "--tf32"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert LAST.match(last) and " TF32 " in last


def test_cli_kernels_without_tools_says_what_is_missing(monkeypatch, capsys):
    real = sass.find
    monkeypatch.setattr(sass, "find", lambda tool: None if tool in ("cuobjdump", "nvdisasm") else real(tool))
    with pytest.raises(SystemExit) as e:
        cli.main(["kernels"])
    message = str(e.value.code)
    assert message.startswith("gpucnn: error: gpucnn kernels needs ") and "cuobjdump" in message
    assert "pip install 'gpucnn[perf]'" in message and "\n" not in message
    assert capsys.readouterr().out == ""


def test_recording_twice_in_a_process_without_the_emulation_variable():
    """`gpucnn kernels` sets GPUCNN_CUPY_EMULATE=1 itself where CuPy was not imported, for every recording."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "GPUCNN_CUPY_EMULATE"}
    code = ("from gpucnn.perf.launches import record_step; import os\n"
            "a = record_step('mnist_cnn', 4, 132); b = record_step('mnist_cnn', 4, 132, tf32=True)\n"
            "assert min(len(a), len(b)) > 20 and 'GPUCNN_CUPY_EMULATE' not in os.environ\n"
            "assert any('direct' in la.kernel for la in a) and not any('direct' in la.kernel for la in b)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --------------------------------------------------------------------------- the Numba backend (--backend numba)

@pytest.fixture(scope="module")
def numba_tools():
    """ptxas/cuobjdump/nvdisasm and NVVM (numba-cuda's compile_ptx), or skip saying which is missing."""
    from gpucnn.perf import numba_side
    why = numba_side.missing() or numba_side.nvvm_missing()
    if why:
        pytest.skip(why)
    return numba_side


@pytest.fixture(scope="module")
def numba_mnist(numba_tools):
    """mnist_cnn at batch 16 on an H200, as the Numba launchers launch it (the child's JSON, cached)."""
    raw = numba_tools.record_raw("mnist_cnn", 16, 132, (9, 0))
    return raw, numba_tools.to_launches(raw, 16)


def test_numba_record_has_the_launchers_grids_and_the_layers_gemms(numba_mnist):
    from gpucnn.backends.numba import conv as nconv
    raw, launches = numba_mnist
    assert all(la.family.startswith("numba:") for la in launches)
    by = {}
    for la in launches:
        by.setdefault((la.layer, la.direction), []).append(la)
    # conv2d_1 (mnist_cnn): 32 -> 64 channels, 3x3 'same', 14x14 images, batch 16
    fwd = [la for la in by[("conv2d_1", "forward")] if la.kernel.startswith("conv2d_fwd")]
    assert len(fwd) == 1
    grid, block, *_ = nconv._geometry_fwd((16, 64, 14, 14), (64, 32, 3, 3), (1, 1))
    assert fwd[0].grid == tuple(grid) and fwd[0].block == tuple(block)
    assert fwd[0].gemm["M"] == 16 * 14 * 14 and fwd[0].gemm["N"] == 64 and fwd[0].gemm["K"] == 32 * 9
    assert fwd[0].flops == 2 * 16 * 14 * 14 * 64 * 32 * 9
    assert fwd[0].gemm["macs_cta"] >= -(-16 * 14 * 14 * 64 * 32 * 9 // fwd[0].ctas)
    wgrad = [la for la in by[("conv2d_1", "weight grad")] if la.gemm]
    grid, block = nconv._geometry_wgrad((16, 64, 14, 14), (64, 32, 3, 3))
    assert wgrad and wgrad[0].grid[0] == grid[0] and wgrad[0].block[0] == block[0]
    assert (wgrad[0].gemm["M"], wgrad[0].gemm["N"], wgrad[0].gemm["K"]) == (32 * 9, 64, 16 * 14 * 14)
    # the first layer needs no data gradient; the others do
    assert ("conv2d", "data grad") not in by and by[("conv2d_1", "data grad")]
    # dense (matmul tiles of _common.GPU_TILE, the GPU's, not the simulator's): forward, data and weight grad
    dense = {d: [la for la in by[("dense_1", d)] if la.gemm] for d in ("forward", "data grad", "weight grad")}
    t = 16
    assert all(v and v[0].block == (t, t, 1) for v in dense.values())
    assert dense["forward"][0].grid == (1, 1, 1) and dense["forward"][0].gemm["N"] == 16
    # the same GEMMs (FLOP) as the CuPy backend's record, layer by layer
    cupy = record_step("mnist_cnn", 16, sms=132)

    def flops(records, direction):
        out = {}
        for la in records:
            if la.gemm and la.direction == direction and la.layer.startswith(("conv2d", "dense")):
                out[la.layer] = out.get(la.layer, 0) + la.flops
        return out
    for d in ("forward", "weight grad"):
        assert flops(launches, d) == flops(cupy, d), d
    assert {la.direction for la in launches} >= {"forward", "data grad", "weight grad", "bias grad",
                                                  "softmax-xent", "sgd step"}


def test_a_numba_kernel_compiles_to_sass_with_an_ffma_main_loop(numba_mnist, numba_tools):
    from gpucnn.perf import model
    raw, launches = numba_mnist
    picked = [la for la in launches if la.kernel.startswith(("matmul", "conv2d_fwd")) and la.gemm]
    compiled = numba_tools.compile_instances(picked, raw, "sm_90")
    for la in picked:
        res, code, entry = compiled[la.family]
        kernel = sass.analyze(entry, code[entry])
        assert kernel.main is not None and kernel.mix["FFMA"] >= 1, (la.kernel, kernel.mix)
        assert kernel.mix["LDS"] >= 1  # the tiles come from shared memory
        assert res[entry].registers > 0 and res[entry].spill_stores == 0
    rows = model.analyze(picked, gpus.GPUS["h200"], False, compiled)
    assert all(r.trips >= 1 and r.predicted_us > 0 and 0 < r.peak_pct < 100 for r in rows)


@needs_tools
def test_cli_kernels_backend_numba_prints_the_report(numba_tools, capsys):
    assert cli.main(["kernels", "--backend", "numba", "--model", "mnist_cnn", "--batch", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert LAST.match(lines[-1]) and " FP32 " in lines[-1], lines[-1]
    assert "backend numba" in lines[0] and "Numba launchers" in lines[1] and "NOT A MEASUREMENT" in lines[1]
    with pytest.raises(SystemExit):
        cli.main(["kernels", "--backend", "numba", "--model", "mnist_cnn", "--batch", "16", "--tf32"])


def test_numba_recording_failure_without_nvvm_is_one_actionable_line(monkeypatch, tmp_path, capsys):
    """Where NVVM is missing the child fails; the command then says what to install, in one line."""
    import subprocess as sp

    from gpucnn.perf import numba_side
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: the child must run
    monkeypatch.setattr(numba_side, "missing", lambda: None)
    monkeypatch.setattr(sass, "missing", lambda: None)
    monkeypatch.setattr(numba_side.subprocess, "run",
                        lambda cmd, **k: sp.CompletedProcess(cmd, 1, "", "NvvmSupportError: libNVVM cannot be found"))
    real_nvvm_missing = numba_side.nvvm_missing
    monkeypatch.setattr(numba_side, "nvvm_missing", real_nvvm_missing)  # runs the patched subprocess too
    with pytest.raises(SystemExit) as e:
        cli.main(["kernels", "--backend", "numba", "--model", "mnist_cnn", "--batch", "4"])
    message = str(e.value.code)
    assert message.startswith("gpucnn: error: gpucnn kernels --backend numba needs NVVM"), message
    assert "libNVVM cannot be found" in message and "nvidia-cuda-nvcc" in message and "\n" not in message
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- the honest ruler (issue 19)

def test_issue_is_counted_per_warp_scheduler():
    """A warp is pinned to one of its SM's 4 schedulers: 2 one-warp CTAs an SM leave 2 schedulers idle, so the
    busiest runs 1 warp (half the SM's issue rate for the work), never a quarter of 2 warps' instructions."""
    from gpucnn.backends.cupy._runtime import scheduler_warps
    assert scheduler_warps(2 * 132, 1, 132) == 1       # 2 warps an SM: 1 on the busiest scheduler
    assert scheduler_warps(8 * 132, 1, 132) == 2
    assert scheduler_warps(132, 4, 132) == 1           # a 4-warp CTA an SM: one warp a scheduler
    assert scheduler_warps(133, 8, 132) == 4           # the SM with 2 CTAs: 16 warps over 4 schedulers
    assert scheduler_warps(1, 1, 132) == 1


def test_gemm_plans_give_every_scheduler_a_warp():
    """The planner's fill test counts warps, not CTAs: the cifar10_vgg weight gradients that took one-warp
    64x32 tiles leaving 2 warps an SM (260 CTAs on 132 SMs) now give every scheduler at least one warp."""
    from gpucnn.backends.cupy import _runtime as rt
    real = rt.sm_count
    rt.sm_count = lambda: 132
    try:
        # conv2d_1 and conv2d_2 weight gradients (M = C R S, N = K, K = N P Q), conv2d_4's data gradient
        for m, n, k in ((9 * 32, 32, 128 * 32 * 32), (9 * 32, 64, 128 * 16 * 16), (128 * 8 * 8, 64, 9 * 128)):
            bm, bn, splits, per = rt.gemm_plan(m, n, k)
            warps = rt.ceil_div(m, bm) * rt.ceil_div(n, bn) * splits * rt.GEMM_THREADS[(bm, bn)] // 32
            assert warps >= 4 * 132, (m, n, k, bm, bn, splits, warps)
    finally:
        rt.sm_count = real


@needs_tools
@pytest.mark.parametrize("model,tf32", [("cifar10_vgg", False), ("cifar10_vgg", True), ("mnist_cnn", False),
                                        ("mnist_cnn", True)])
def test_no_launch_is_faster_than_its_busiest_scheduler(model, tf32):
    """Issue 19's floor, for every launch of the steps (batch 128, H200): predicted time >= the warps on the
    busiest scheduler x one warp's instructions / clock, and >= the launch floor."""
    rows, gpu = perf.run(model, 128, "h200", tf32=tf32)
    for r in rows:
        clocks = r.predicted_us * 1e-6 * gpu.hz
        assert clocks >= r.scheduler_warps * r.warp_instructions * (1 - 1e-9), (r.launch.kernel, r.launch.grid)
        assert r.predicted_us >= gpu.launch_eager_us
        assert r.predicted_us >= (r.shared_us or 0.0)


@needs_tools
def test_compare_reads_an_ncu_profile_and_pairs_every_launch(tmp_path):
    """gpucnn kernels --compare on a planted profile (the model's own launches, durations x known factors, ncu's
    raw-CSV format): every launch paired in order with its factor as the ratio; a launch missing from the
    profile is named, not shifted onto its neighbour; microsecond units read as such."""
    import csv

    from gpucnn.perf import compare
    rows, gpu = perf.run("mnist_cnn", 16, "h200")
    path = tmp_path / "ncu.csv"
    compare.plant(rows, path)
    pairs = compare.match(rows, compare.read_ncu(path))
    assert len(pairs) == len(rows) and all(p.row is rows[i] for i, p in enumerate(pairs))
    assert [p.ratio for p in pairs] == pytest.approx([compare.FACTORS[i % 4] for i in range(len(rows))], rel=1e-3)
    text = compare.format_compare(pairs, gpu)
    assert f"{len(rows)} launches matched" in text and "unmatched" not in text
    # drop the 6th launch and give the durations in microseconds
    lines = list(csv.reader(path.open()))
    lines[1][lines[0].index("gpu__time_duration.sum")] = "usecond"
    body = [ln for i, ln in enumerate(lines[2:]) if i != 5]
    for ln in body:
        col = lines[0].index("gpu__time_duration.sum")
        ln[col] = str(float(ln[col].replace(",", "")) / 1e3)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(lines[:2] + body)
    pairs = compare.match(rows, compare.read_ncu(path))
    missing = [p for p in pairs if p.measured is None]
    assert [p.row for p in missing] == [rows[5]]
    kept = [p for p in pairs if p.measured is not None]
    assert all(p.ratio == pytest.approx(compare.FACTORS[rows.index(p.row) % 4], rel=1e-3) for p in kept)
    assert f"unmatched (in the model, not the profile): {rows[5].launch.kernel}" in compare.format_compare(pairs, gpu)


def test_compare_refuses_a_file_that_is_not_an_ncu_raw_csv(tmp_path):
    from gpucnn.perf import compare
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an ncu raw CSV"):
        compare.read_ncu(path)
