// common.cuh: what every gpucnn kernel file shares.
//
// Compiled three ways: by NVRTC through cupy.RawModule on a GPU machine, by nvcc in the tests
// (sm_80 and sm_90, spill check), and as host C++ by g++ with kernels/hostemu.h
// force-included (GPUCNN_HOSTEMU defined) so the kernels run on a CPU in CI. Keep to the CUDA C
// subset hostemu.h provides; no headers beyond this one (NVRTC finds no system headers).
#pragma once

#ifndef GPUCNN_HOSTEMU
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#endif

#define GPUCNN_THREADS 256  // threads per block of every tiled kernel

// One thread per element, striding over the grid: i = first, first + stride, ... while i < n, with
// `i` an int in the body. The counter is unsigned: every n the launchers accept is below 2^31 and a
// stride is below 2^26 (65535 blocks of at most 1024 threads), so first + k * stride never wraps,
// where an int counter would overflow (undefined behaviour) on the last step near n = 2^31.
#define GRID_STRIDE_LOOP(i, n)                                                                     \
    for (unsigned i##_u = blockIdx.x * blockDim.x + threadIdx.x, i##_stride = blockDim.x * gridDim.x; \
         i##_u < unsigned(n); i##_u += i##_stride)                                                 \
        if (const int i = int(i##_u); true)

// One warp per row, striding over the grid: warp w of the grid takes rows w, w + warps, ... (a warp
// takes whole rows, so full-warp shuffles in the body have all 32 lanes); `r` an int in the body, the
// counter unsigned as in GRID_STRIDE_LOOP.
#define WARP_ROW_LOOP(r, rows)                                                                     \
    for (unsigned r##_u = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, r##_stride = (gridDim.x * blockDim.x) >> 5; \
         r##_u < unsigned(rows); r##_u += r##_stride)                                              \
        if (const int r = int(r##_u); true)

// A 16-byte shared-memory load (LDS.128): on a device the plain float4 load. The emulator's wavefront
// counter (hostemu.h, GPUCNN_HOSTEMU_HOOKS) records it as one 16-byte access of its warp, where the host
// compiler would split a float4 into four 4-byte loads. Every 16-byte shared access goes through it.
__device__ __forceinline__ float4 lds128(const float* p) {
#ifdef GPUCNN_HOSTEMU_HOOKS
    float4 v;
    hostemu::banks::load<4>(p, &v.x);
    return v;
#else
    return *reinterpret_cast<const float4*>(p);
#endif
}

// ReLU as PyTorch computes it: 0 where v <= 0, v elsewhere, so NaN passes through (fmaxf(NaN, 0) would
// give 0); every fused ReLU (GEMM epilogues, the pooling's) and the elementwise kernel use it.
__device__ __forceinline__ float apply_relu(float v) { return v <= 0.f ? 0.f : v; }
// ReLU's backward given its input (or output) x: 0 where x <= 0, dy elsewhere (a NaN x passes dy, and an
// inf or NaN dy where x <= 0 gives 0), as PyTorch's threshold_backward.
__device__ __forceinline__ float relu_grad(float dy, float x) { return x <= 0.f ? 0.f : dy; }

// The thread's index in a 1-D grid, unsigned (the tails of the vectorized loops add it to n & ~3).
__device__ __forceinline__ unsigned grid_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }

__device__ __forceinline__ unsigned umulhi32(unsigned a, unsigned b) {
#ifdef GPUCNN_HOSTEMU
    return unsigned((uint64_t(a) * uint64_t(b)) >> 32);
#else
    return __umulhi(a, b);
#endif
}

// Integer division by a divisor fixed for the whole kernel, as a multiply-high and a shift
// (Granlund & Montgomery): q = umulhi(x, mul) >> shr, exact for 0 <= x < 2^31 and d >= 1.
// Built once per thread from a kernel argument; the index arithmetic of implicit GEMM divides
// by R*S, S, P*Q, Q, ... for every element it loads.
struct FastDiv {
    unsigned d, mul, shr;
    __device__ __forceinline__ explicit FastDiv(int divisor) : d(unsigned(divisor)) {
        if (d <= 1) {
            mul = 0;
            shr = 0;
        } else {
            unsigned l = 0;
            while ((1u << l) < d) ++l;  // ceil(log2 d)
            mul = unsigned(((uint64_t(1) << (31 + l)) + d - 1) / d);
            shr = l - 1;
        }
    }
    __device__ __forceinline__ int div(int x) const { return d <= 1 ? x : int(umulhi32(unsigned(x), mul) >> shr); }
    // q = x / d and r = x % d
    __device__ __forceinline__ void divmod(int x, int& q, int& r) const {
        q = div(x);
        r = x - q * int(d);
    }
};

// TF32 tensor cores (sm_80+): an FP32 value as a TF32 operand, and one warp-wide D(16x8) += A(16x8) B(8x8)
// product with FP32 accumulation. The operand is rounded to nearest, ties away from zero, by adding half a
// TF32 ulp to its bits (the tensor core reads only the top 19): one integer add where cvt.rna.tf32.f32 is
// two instructions on sm_90 (a finiteness test and the same add). Finite values and infinities round as
// cvt.rna does; a NaN whose payload lies only in the 13 dropped bits reads as an infinity, and NaN
// patterns within 0x1000 of 0xffffffff wrap to zero (CUTLASS's round_half_ulp_truncate does the same).
__device__ __forceinline__ unsigned to_tf32(float x) { return __float_as_uint(x) + 0x1000u; }

__device__ __forceinline__ void mma_tf32_16x8x8(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#ifdef GPUCNN_HOSTEMU
    hostemu::mma_m16n8k8_tf32(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Asynchronous global -> shared copies (cp.async, sm_80+): 4 bytes (.ca) or 16 bytes (.cg, both
// addresses 16-byte aligned), zero-filled when !valid (src-size 0: nothing is read). A thread sees
// its copies in shared memory after cp_async_wait_all(); other threads after a __syncthreads() too.
// The destination is a shared-memory address (smem_t: the 32-bit shared window address on a device,
// a pointer in the emulator), taken once per kernel by smem_address and offset by smem_at.
#ifdef GPUCNN_HOSTEMU
typedef float* smem_t;
__device__ __forceinline__ smem_t smem_address(float* p) { return p; }
__device__ __forceinline__ smem_t smem_at(smem_t s, int floats) { return s + floats; }
#else
typedef unsigned smem_t;
__device__ __forceinline__ smem_t smem_address(float* p) {
    unsigned d;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(d) : "l"(p));
    return d;
}
__device__ __forceinline__ smem_t smem_at(smem_t s, int floats) { return s + 4u * unsigned(floats); }
#endif

// p + i * stride bytes for a per-thread stride and a constant i: one wide multiply-add, no 32-bit
// offset to form first (the per-load address of a loader's run of equally spaced elements).
__device__ __forceinline__ const float* advance(const float* p, unsigned stride_bytes, int i) {
    return reinterpret_cast<const float*>(reinterpret_cast<const char*>(p) + uint64_t(stride_bytes) * unsigned(i));
}

__device__ __forceinline__ void cp_async4(smem_t dst, const float* src, bool valid) {
#ifdef GPUCNN_HOSTEMU
    hostemu::cp_async(dst, src, 1, valid);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
#endif
}

__device__ __forceinline__ void cp_async16(smem_t dst, const float* src, bool valid) {
#ifdef GPUCNN_HOSTEMU
    hostemu::cp_async(dst, src, 4, valid);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#ifdef GPUCNN_HOSTEMU
    hostemu::cp_async_wait_all();
#else
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;  // complete in lane 0
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;  // complete in lane 0
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is returned to
// every thread. `scratch` is a __shared__ float[32] of the caller. Every thread must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -__int_as_float(0x7f800000);  // -inf (NVRTC has no INFINITY macro)
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}
