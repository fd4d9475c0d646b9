"""The static kernel model: every launch of a training step, its resources, main loop, occupancy and time.

For each launch (``launches.record_step``) of one training step, with each kernel file compiled once by
nvcc for the GPU's architecture with every instance its launcher lists (``sass.build``):

* resources: registers, static shared memory, spills (ptxas -v, cuobjdump -res-usage);
* occupancy: CTAs and warps per SM by the CUDA occupancy calculator's rules (``gpus.occupancy``);
* waves: CTAs / (SMs x CTAs per SM);
* the main loop's instruction mix (``sass.analyze``) and how often each warp runs it:
  a GEMM (conv / linear, and the direct convolutions) runs it until its busiest CTA's multiply-adds are
  done: trips = the CTA's MACs (K steps per CTA x BM x BN x BK for a GEMM) over the
  MACs one iteration of the CTA's warps does (FFMA: 1 per lane, HMMA.1688: 16 x 8 x 8 per warp), so a
  loop the compiler unrolled counts right; any other kernel runs it until its compulsory bytes are moved:
  trips = ceil(bytes / 4 / threads in the grid / 4-byte words one trip's LDG/STG move) (at least 1);
  instructions outside the main loop count once per warp (prologue, epilogue, untaken branches too);
  the count is static: a main loop with branches inside counts all of its body every trip (the pooling
  kernels' window loops, unrolled for any window with early exits, so their issue-bound time is an upper
  bound; the GEMM main loops have no branches inside but the loop's own);
* issue-bound time, per warp scheduler: a warp is pinned to one of its SM's 4 schedulers, which issues one
  instruction a clock, so the busiest SM's ceil(CTAs / SMs) CTAs (wave quantization at the SM) spread their
  warps over 4 schedulers and the busiest scheduler needs ceil(those warps / 4) x one warp's instructions
  clocks (`_runtime.scheduler_warps`, the GEMM planner's rule too): an SM holding 2 warps issues at half rate;
* shared-pipe time: one shared-memory wavefront a clock an SM (`shared` below, when counted);
* memory-bound time: compulsory bytes (every array argument read or written once) / HBM bandwidth;
* latency-bound time: the busiest SM runs its CTAs in ceil(CTAs an SM / resident CTAs) rounds; in each, a
  GEMM's K step cannot finish before the next step's global loads land (two stages: a load latency a step,
  an L2 hit's, as the operand tiles are re-read by the other tiles and filter taps) plus a barrier and a
  shared load, a direct convolution's trip before a shared load, any other kernel's trip before its global
  load from DRAM (gpus [LAT]);
* launch floor: a launch takes at least the launch cost of an eager launch stream, or of a kernel node of a
  CUDA graph (`graph=True`) (gpus [LAUNCH]);
* predicted time: the largest of these, named in the row's `bound` (no caches, the sustained clock: a model,
  not a measurement); % of peak: the GEMM's 2 M N K FLOP over its predicted time, against the FP32 (FFMA)
  or the dense TF32 tensor-core peak.

The Numba backend (``backend="numba"``, ``numba_side``): its launches recorded in a child process, each
kernel instance compiled from its Python function by numba-cuda (NVVM) to PTX and by ptxas to SASS, then
the same analysis, report and totals.

Every figure is a model of the code as compiled, not a measurement.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

from . import gpus, sass
from .launches import Launch, record_step

MIX = ("FFMA", "HMMA", "LDS", "STS", "LDG", "STG", "ALU", "BAR")


BOUNDS = ("issue", "shared", "memory", "latency", "launch")


@dataclass
class Row:
    launch: Launch
    res: sass.Resources
    kernel: sass.Kernel
    occ: gpus.Occupancy
    waves: float
    trips: int
    warp_instructions: int      # per warp, the whole launch of one CTA's warp
    scheduler_warps: int        # warps the busiest warp scheduler runs over the launch
    issue_us: float
    memory_us: float
    latency_us: float
    launch_us: float
    predicted_us: float
    peak_pct: float | None
    shared_us: float | None = None   # the shared pipe's time from counted wavefronts (None: not counted)
    bound: str = "issue"             # which of BOUNDS gives predicted_us
    peak_flops: float = 0.0          # the FP32 or TF32 peak the row's % of peak is against
    banks: object = None             # the counted shared traffic of its kernel instance (banks.Count), if any

    def bounds(self) -> dict:
        return {"issue": self.issue_us, "shared": self.shared_us or 0.0, "memory": self.memory_us,
                "latency": self.latency_us, "launch": self.launch_us}


def family_names(family: str) -> list[str]:
    """Every name expression the launcher module lists for kernels/<family>.cu (what CuPy compiles)."""
    from ..backends.cupy import _runtime as rt
    module = importlib.import_module(f"gpucnn.backends.cupy.{family}")
    return sorted({n for v in vars(module).values() if isinstance(v, rt.Family) and v.family == family
                   for n in v.names})


def compile_families(families, arch: str) -> dict:
    """{family: (resources by symbol, SASS by symbol)}: each kernels/<family>.cu compiled once (two nvcc at a
    time, the biggest files first; cached by content, see sass.build)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..backends.cupy import _runtime as rt
    order = sorted(set(families), key=lambda f: (f not in ("conv", "dense"), f))
    with ThreadPoolExecutor(2) as pool:
        built = pool.map(lambda f: sass.build(rt.module_source(f), rt.kernels_dir(), family_names(f), arch), order)
        return {f: (sass.resources(b), sass.functions(b["sass"])) for f, b in zip(order, built)}


def _trips(launch: Launch, kernel: sass.Kernel) -> int:
    if kernel.main is None:
        return 0
    warps = math.ceil(launch.threads / 32)
    if launch.gemm is not None:
        g = launch.gemm
        macs_per_trip = warps * (kernel.mix["FFMA"] * 32 + kernel.mix["HMMA"] * 16 * 8 * 8)
        if macs_per_trip:
            return math.ceil(g["macs_cta"] / macs_per_trip)
    words = launch.bytes / 4 / (launch.ctas * launch.threads)
    return max(1, math.ceil(words / max(kernel.global_words, 1)))


def _latency_clocks(launch: Launch, trips: int, rounds: int, gpu: gpus.GPU) -> int:
    """Clocks the busiest SM cannot go below for want of independent work (gpus [LAT]): `rounds` rounds of
    resident CTAs, each walking its main loop trip by trip."""
    gemm = launch.gemm or {}
    if "ksteps" in gemm:  # double-buffered: step k+1's loads (mostly L2 hits) in flight during step k, a barrier
        return rounds * gemm["ksteps"] * (gpu.l2_latency + gpu.barrier_latency + gpu.shared_latency)
    if gemm:  # a direct convolution: its tiles staged in shared memory, read trip by trip
        return rounds * trips * gpu.shared_latency
    return rounds * max(trips, 1) * gpu.dram_latency


def finish(row: Row) -> Row:
    """predicted_us and bound from the row's bounds (called again when the shared pipe's time is added)."""
    bounds = row.bounds()
    row.bound = max(BOUNDS, key=lambda b: (bounds[b], -BOUNDS.index(b)))
    row.predicted_us = bounds[row.bound]
    row.peak_pct = 100 * row.launch.flops / (row.predicted_us * 1e-6) / row.peak_flops if row.launch.gemm else None
    return row


def analyze(launches: list[Launch], gpu: gpus.GPU, tf32: bool, compiled: dict, graph: bool = False) -> list[Row]:
    """Model every launch on `gpu`; `graph`: the launches are kernel nodes of a replayed CUDA graph."""
    from ..backends.cupy._runtime import scheduler_warps
    rows = []
    clock_hz = gpu.hz
    peak = (gpu.tf32_tflops if tf32 else gpu.fp32_tflops) * 1e12
    for launch in launches:
        res_by_symbol, code_by_symbol = compiled[launch.family][:2]
        if len(compiled[launch.family]) > 2:  # a Numba instance: its own cubin, entry named by the PTX
            symbol = compiled[launch.family][2]
        else:
            symbol = sass.find_symbol(launch.kernel, code_by_symbol)
        res = res_by_symbol[symbol]
        kernel = sass.analyze(symbol, code_by_symbol[symbol])
        occ = gpus.occupancy(gpu, launch.threads, res.registers, res.shared)
        waves = launch.ctas / (gpu.sms * max(occ.blocks, 1))
        trips = _trips(launch, kernel)
        per_warp = kernel.loop_instructions * trips + kernel.outside
        sched = scheduler_warps(launch.ctas, math.ceil(launch.threads / 32), gpu.sms)
        issue = sched * per_warp / clock_hz * 1e6
        memory = launch.bytes / (gpu.bandwidth_gbs * 1e9) * 1e6
        rounds = math.ceil(math.ceil(launch.ctas / gpu.sms) / max(occ.blocks, 1))
        latency = _latency_clocks(launch, trips, rounds, gpu) / clock_hz * 1e6
        floor = gpu.launch_graph_us if graph else gpu.launch_eager_us
        rows.append(finish(Row(launch, res, kernel, occ, waves, trips, per_warp, sched, issue, memory, latency, floor,
                               0.0, None, peak_flops=peak)))
    return rows


def add_shared(rows: list[Row], gpu: gpus.GPU) -> None:
    """The shared pipe's time of every row from counted wavefronts (``banks``): the busiest SM's ceil(CTAs /
    SMs) CTAs x a CTA's wavefronts, one wavefront (128 bytes) a clock ([SMEM]). Kernels without static shared
    memory need none. Each row keeps its instance's count (`banks`) for the report."""
    from ..backends.cupy import hostemu
    from . import banks
    shared = {r.launch.kernel for r in rows if r.res.shared}
    if hostemu.compiler() is None:  # the counting build needs g++: the shared pipe stays unpriced ("-")
        return
    counts = banks.count_step([r.launch for r in rows], needs=lambda la: la.kernel in shared)
    per_clock = gpu.smem_bytes_per_clock / 128
    for r in rows:
        if not r.res.shared:
            r.shared_us = 0.0
        elif r.launch.kernel in counts:
            r.banks = counts[r.launch.kernel]
            wavefronts = r.banks.per_cta((r.launch.gemm or {}).get("ksteps"))
            r.shared_us = math.ceil(r.launch.ctas / gpu.sms) * wavefronts / per_clock / gpu.hz * 1e6
        finish(r)


def run(model: str = "cifar10_vgg", batch: int = 128, gpu: str = "h200", tf32: bool = False,
        backend: str = "cupy", graph: bool = False) -> tuple[list[Row], gpus.GPU]:
    """Record the step's launches, compile what they use, and model every launch (`graph`: as the kernel
    nodes of a replayed CUDA graph, as fit runs a captured step, rather than launched one by one)."""
    if gpu not in gpus.GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose {', '.join(gpus.GPUS)}")
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    spec = gpus.GPUS[gpu]
    if backend == "numba":
        from . import numba_side
        if tf32:
            raise ValueError("--tf32: the numba backend's kernels are FP32 only (no tensor-core path)")
        why = numba_side.missing()
        if why:
            raise numba_side.ToolsMissing(why)
        raw = numba_side.record_raw(model, batch, spec.sms, numba_side.capability(spec.arch))
        launches = numba_side.to_launches(raw, batch)
        compiled = numba_side.compile_instances(launches, raw, spec.arch)
        return analyze(launches, spec, tf32, compiled, graph), spec
    why = sass.missing()
    if why:
        raise RuntimeError(why)
    launches = record_step(model, batch, spec.sms, tf32=tf32, backend=backend)
    compiled = compile_families({launch.family for launch in launches}, spec.arch)
    rows = analyze(launches, spec, tf32, compiled, graph)
    add_shared(rows, spec)
    return rows, spec


def totals(rows: list[Row], gpu: gpus.GPU, tf32: bool) -> tuple[float, float]:
    """(step time in ms, GEMMs' % of peak) of the model."""
    step_us = sum(r.predicted_us for r in rows)
    gemms = [r for r in rows if r.launch.gemm]
    flops = sum(r.launch.flops for r in gemms)
    gemm_s = sum(r.predicted_us for r in gemms) * 1e-6
    peak = (gpu.tf32_tflops if tf32 else gpu.fp32_tflops) * 1e12
    return step_us / 1e3, (100 * flops / gemm_s / peak if gemm_s else 0.0)


def _us(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.1f}"


def format_shared(rows: list[Row]) -> list[str]:
    """The counted shared-memory traffic of each instance: wavefronts a K step (or a CTA) against the
    conflict-free count, and every access site's wavefronts a request (its ideal in brackets)."""
    counts = {r.launch.kernel: r.banks for r in rows if r.banks is not None}
    if not counts:
        return []
    lines = ["shared memory (model: one CTA of each instance run through the emulator's wavefront counter; "
             "a site's wavefronts a warp request, conflict-free count in brackets):"]
    for kernel, c in counts.items():
        if not c.sites:
            continue
        what = (f"a K step {c.per_step:.0f} wavefronts (conflict-free {c.ideal_per_step:.0f})" if c.per_step else
                f"a CTA {c.fixed:.0f} wavefronts (conflict-free {c.ideal_fixed:.0f})")
        sites = "; ".join(f"{s.where} {s.instruction} {s.per_request:.2f} ({s.ideal / s.requests:.2f})"
                          for s in c.sites)
        lines.append(f"  {kernel}: {what}: {sites}")
    return lines


def format_report(rows: list[Row], gpu: gpus.GPU, model: str, batch: int, tf32: bool, backend: str = "cupy",
                  graph: bool = False) -> str:
    mode = "TF32" if tf32 else "FP32"
    peak = gpu.tf32_tflops if tf32 else gpu.fp32_tflops
    floor = (f"CUDA-graph kernel nodes ({gpu.launch_graph_us:g} us a launch)" if graph else
             f"eager launches ({gpu.launch_eager_us:g} us a launch)")
    lines = [
        f"gpucnn kernels: {model} training step, batch {batch}, backend {backend}, {gpu.name} ({gpu.arch}, "
        f"{gpu.sms} SMs, {gpu.hz / 1e9:.2f} GHz, {mode} peak {peak:g} TFLOPS, {gpu.bandwidth_gbs / 1000:g} TB/s), "
        f"{floor}",
        ("MODEL OUTPUT, NOT A MEASUREMENT: launches as the CuPy launchers choose them (no kernel ran); SASS of nvcc "
         f"-arch={gpu.arch}; " if backend != "numba" else
         "MODEL OUTPUT, NOT A MEASUREMENT: launches as the Numba launchers choose them (no kernel ran); SASS of "
         f"numba-cuda's PTX (NVVM) through ptxas -arch={gpu.arch}; ")
        + "occupancy by the occupancy calculator's rules; time = the largest of the issue (busiest warp "
        "scheduler), shared-pipe, memory, latency and launch bounds.",
        "columns: grid; regs/thread; static smem B; spill B (stores+loads); CTAs/SM, warps/SM (limit); waves; "
        "main-loop mix per trip and trips; warps on the busiest scheduler; issue, shared, memory, latency, "
        "predicted us and the bound that gives it; % of peak (GEMMs). Every figure a model.",
    ]
    header = (f"{'layer':13s} {'direction':19s} {'kernel':36s} {'grid':>14s} {'reg':>4s} {'smem':>6s} {'spill':>5s} "
              f"{'CTA/SM':>6s} {'warp/SM':>7s} {'waves':>6s}  {'FFMA HMMA LDS STS LDG STG  ALU BAR':35s} {'FFMA%':>5s} "
              f"{'trips':>5s} {'w/sch':>5s} {'issue':>8s} {'shared':>8s} {'memory':>8s} {'latency':>8s} {'pred':>8s} "
              f"{'bound':>7s} {'%peak':>6s}")
    lines += [header, "-" * len(header)]
    for r in rows:
        la, mix = r.launch, r.kernel.mix
        grid = "x".join(str(g) for g in la.grid)
        mix_text = " ".join(f"{mix[k]:{w}d}" for k, w in zip(MIX, (4, 4, 3, 3, 3, 3, 4, 3)))
        total = r.kernel.loop_instructions
        share = f"{100 * mix['FFMA'] / total:5.1f}" if total else "    -"
        pct = f"{r.peak_pct:6.1f}" if r.peak_pct is not None else "     -"
        spill = r.res.spill_stores + r.res.spill_loads
        lines.append(f"{la.layer[:13]:13s} {la.direction[:19]:19s} {la.kernel[:36]:36s} {grid:>14s} "
                     f"{r.res.registers:4d} {r.res.shared:6d} {spill:5d} {r.occ.blocks:6d} {r.occ.warps:7d} "
                     f"{r.waves:6.2f}  {mix_text:35s} {share} {r.trips:5d} {r.scheduler_warps:5d} "
                     f"{_us(r.issue_us):>8s} {'-' if r.shared_us is None else _us(r.shared_us):>8s} "
                     f"{_us(r.memory_us):>8s} {_us(r.latency_us):>8s} {_us(r.predicted_us):>8s} {r.bound:>7s} {pct}")
    gemms = [r for r in rows if r.launch.gemm and r.kernel.loop_instructions]
    if gemms:
        shares = [r.kernel.mix["FFMA"] / r.kernel.loop_instructions for r in gemms if r.kernel.mix["FFMA"]]
        per_hmma = [r.kernel.loop_instructions / r.kernel.mix["HMMA"] for r in gemms if r.kernel.mix["HMMA"]]
        if shares:
            lines.append(f"GEMM main loops (model): FFMA {100 * min(shares):.0f}-{100 * max(shares):.0f}% of the "
                         "loop's instructions")
        if per_hmma:
            lines.append(f"GEMM main loops (model): {min(per_hmma):.1f}-{max(per_hmma):.1f} instructions per HMMA.1688")
        issue = sum(r.issue_us for r in gemms)
        memory = sum(r.memory_us for r in gemms)
        lines.append(f"GEMMs (model): {len(gemms)} launches, {sum(r.launch.flops for r in gemms) / 1e9:.2f} GFLOP, "
                     f"issue-bound {issue:.1f} us, memory-bound {memory:.1f} us")
    lines += format_shared(rows)
    by_bound = {b: [r for r in rows if r.bound == b] for b in BOUNDS}
    lines.append("bounds (model): " + ", ".join(f"{b} {len(rs)} launches {sum(r.predicted_us for r in rs):.1f} us"
                                                for b, rs in by_bound.items() if rs))
    step_ms, pct = totals(rows, gpu, tf32)
    lines.append(f"{model} training step, batch {batch}, {gpu.name} {mode} (model): {step_ms:.3f} ms, "
                 f"GEMMs at {pct:.1f}% of peak")
    return "\n".join(lines)
