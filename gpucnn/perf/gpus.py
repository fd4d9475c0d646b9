"""Published GPU facts and the CUDA occupancy calculator's rules (no GPU needed).

Sources (each figure below names its own):
  [H100] NVIDIA H100 Tensor Core GPU datasheet and the Hopper architecture whitepaper (H100 SXM5: 132 SMs,
         128 FP32 lanes per SM, 3.35 TB/s HBM3, FP32 67 TFLOPS, TF32 tensor 989 TFLOPS with sparsity,
         i.e. 494.7 dense); max boost 1.98 GHz (66.9 TFLOPS = 132 x 128 x 2 x 1.98 GHz; also listed at
         https://glennklockwood.com/garden/processors/h100).
  [H200] NVIDIA H200 Tensor Core GPU product page/datasheet: the H100's GH100 with 141 GB HBM3e at 4.8 TB/s,
         the same compute (FP32 67 TFLOPS, TF32 989 TFLOPS with sparsity); /work/.library/device/H200.md.
  [A100] NVIDIA A100 Tensor Core GPU datasheet and Ampere whitepaper (A100 SXM4 80 GB: 108 SMs, 1410 MHz
         boost, FP32 19.5 TFLOPS, TF32 tensor 156 TFLOPS dense, 2,039 GB/s HBM2e).
  [CCG]  CUDA C++ Programming Guide, "Technical Specifications per Compute Capability": 65,536 32-bit
         registers per SM, 2,048 resident threads (64 warps) and 32 resident blocks per SM for 8.0 and 9.0,
         shared memory per SM 164 KB (8.0) and 228 KB (9.0), 1 KB of it reserved by the driver per block.
  [OCC]  cuda_occupancy.h (the CUDA Occupancy Calculator's code, shipped in the toolkit's include/):
         registers allocated per warp in units of 256, per sub-partition (4 per SM); shared memory
         allocated in units of 128 bytes plus reservedSharedMemPerBlock (1,024 bytes, cc >= 8.0); with the
         default carveout the whole sharedMemPerMultiprocessor is offered.
  [SCHED] Hopper and Ampere whitepapers: an SM has four partitions, each with its own warp scheduler issuing
         one warp instruction a clock; a warp stays on its partition's scheduler.
  [SMEM] NVIDIA Developer Forums, "Unexpected shared memory bank conflict" (2019, NVIDIA's answer): the L1 /
         shared memory return bandwidth is 128 bytes a cycle; one wavefront (a set of bank accesses without
         conflict) a clock an SM. 32 banks of 4 bytes: CUDA C++ Programming Guide, "Shared Memory" (5.x+).
  [LAT]  W. Luo et al., "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture" (IPDPS 2024,
         arXiv:2402.13499) and "Dissecting the NVIDIA Hopper Architecture through Microbenchmarking and
         Multiple Level Analysis" (arXiv:2501.12084): pointer-chasing latencies on GH100 of about 30 cycles
         for shared memory, about 260 for an L2 hit and about 480 for a load served by DRAM (A100: similar).
         The barrier's cost is an estimate of ours (a __syncthreads with every warp already there: tens of
         cycles).
  [LAUNCH] meta-pytorch/tritonbench pull request 1017 (2026): a raw cuLaunchKernel costs about 3.0 us of host
         time a launch (GB200), the floor of an eager launch stream; ahrefs/ocannl issue 488 (2026): a
         replayed CUDA graph costs about 0.58 us a kernel node (plus about 15 us a replay).
  [CLOCK] /work/.library/device/KINDS.md (this workplace's H200, 2026-10-28): the SM clock read 1980 MHz right
         after minutes of 8192^3 BF16 matrix products, so the sustained clock is taken as the boost clock;
         benchmarks/gpu_proof.sh logs nvidia-smi's clocks to check it under FP32 load.
Every figure of [LAT], [LAUNCH] and [CLOCK] is an estimate to calibrate the first time a GPU is lent
(`gpucnn kernels --compare` against Nsight Compute's durations).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    arch: str              # nvcc -arch
    sms: int
    clock_ghz: float       # boost clock the peaks are quoted at
    fp32_tflops: float     # FFMA peak (2 FLOP per FMA)
    tf32_tflops: float     # dense TF32 tensor-core peak
    bandwidth_gbs: float   # HBM bandwidth, GB/s
    regs_per_sm: int = 65536          # [CCG]
    regs_per_block: int = 65536       # [CCG]
    max_regs_per_thread: int = 255    # [CCG]
    max_threads_per_sm: int = 2048    # [CCG]
    max_blocks_per_sm: int = 32       # [CCG], [OCC] cudaOccMaxBlocksPerMultiprocessor (8.0: 32; 9.0: 32)
    smem_per_sm: int = 233472         # bytes: 228 KB [CCG] (9.0)
    smem_per_block: int = 49152       # bytes without opt-in (static __shared__ limit) [CCG]
    smem_reserved_per_block: int = 1024  # [OCC] reservedSharedMemPerBlock, cc >= 8.0
    reg_unit: int = 256               # [OCC] cudaOccRegAllocationGranularity
    smem_unit: int = 128              # [OCC] cudaOccSMemAllocationGranularity (8.x, 9.0)
    sub_partitions: int = 4           # [OCC] cudaOccSubPartitionsPerMultiprocessor; also 4 warp schedulers/SM
    warp_size: int = 32
    sustained_ghz: float | None = None   # [CLOCK] the clock under sustained load (None: clock_ghz)
    smem_bytes_per_clock: int = 128   # [SMEM] one shared-memory wavefront a clock an SM
    shared_latency: int = 30          # clocks [LAT]
    l2_latency: int = 260             # clocks [LAT]
    dram_latency: int = 480           # clocks [LAT]
    barrier_latency: int = 20         # clocks [LAT] (our estimate)
    launch_eager_us: float = 3.0      # [LAUNCH] a kernel launched from the host, one after another
    launch_graph_us: float = 0.6      # [LAUNCH] a kernel node of a replayed CUDA graph

    @property
    def issue_per_clock(self) -> int:
        """Warp instructions an SM can issue per clock: 4 schedulers x 1 ([SCHED]); one warp at most 1."""
        return self.sub_partitions

    @property
    def hz(self) -> float:
        """The clock the model runs at: the sustained clock ([CLOCK])."""
        return (self.sustained_ghz or self.clock_ghz) * 1e9


GPUS = {
    "h200": GPU("H200", "sm_90", sms=132, clock_ghz=1.98, fp32_tflops=66.9, tf32_tflops=494.7,
                bandwidth_gbs=4800.0),                                          # [H200], [H100]
    "h100": GPU("H100", "sm_90", sms=132, clock_ghz=1.98, fp32_tflops=66.9, tf32_tflops=494.7,
                bandwidth_gbs=3350.0),                                          # [H100] SXM5
    "a100": GPU("A100", "sm_80", sms=108, clock_ghz=1.41, fp32_tflops=19.5, tf32_tflops=156.0,
                bandwidth_gbs=2039.0, smem_per_sm=167936),                      # [A100] SXM4 80 GB; 164 KB [CCG]
}


def _round_up(v: int, unit: int) -> int:
    return -(-v // unit) * unit


@dataclass(frozen=True)
class Occupancy:
    blocks: int            # resident CTAs per SM
    warps: int             # resident warps per SM
    limit: str             # what limits it: warps, blocks, registers, shared memory


def occupancy(gpu: GPU, threads: int, regs: int, smem: int) -> Occupancy:
    """Resident CTAs per SM of a kernel using `regs` registers per thread and `smem` bytes of static shared
    memory per block of `threads` threads: cudaOccMaxActiveBlocksPerMultiprocessor's rules [OCC] (default
    carveout, no dynamic shared memory, no partitioned global caching on 8.0/9.0)."""
    warps_per_block = -(-threads // gpu.warp_size)
    limits = {"warps": (gpu.max_threads_per_sm // gpu.warp_size) // warps_per_block,
              "blocks": gpu.max_blocks_per_sm}
    # registers: per warp, rounded to the allocation unit; allocated per sub-partition
    regs_per_warp = _round_up(max(regs, 1) * gpu.warp_size, gpu.reg_unit)
    assumed = regs_per_warp * _round_up(warps_per_block, gpu.sub_partitions)
    allocated = regs_per_warp * warps_per_block
    if regs > gpu.max_regs_per_thread or assumed > gpu.regs_per_block or allocated > gpu.regs_per_block:
        limits["registers"] = 0
    else:
        warps_per_sub = (gpu.regs_per_sm // gpu.sub_partitions) // regs_per_warp
        limits["registers"] = warps_per_sub * gpu.sub_partitions // warps_per_block
    # shared memory: static + the driver's reserved 1 KB, in 128-byte units, against the SM's full carveout
    smem_alloc = _round_up(smem + gpu.smem_reserved_per_block, gpu.smem_unit)
    if smem > gpu.smem_per_block:
        limits["shared memory"] = 0
    else:
        limits["shared memory"] = gpu.smem_per_sm // smem_alloc
    limit = min(limits, key=lambda k: (limits[k], list(limits).index(k)))
    blocks = limits[limit]
    return Occupancy(blocks=blocks, warps=blocks * warps_per_block, limit=limit)
