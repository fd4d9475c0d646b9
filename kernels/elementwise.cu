// elementwise.cu: one-thread-per-element kernels: ReLU, add, dropout (+ backwards), nearest
// upsampling (+ backward), and the channel copies of concat / concat_backward.
//
// Arrays are float32, C-contiguous, n < 2^31 elements (the launchers check); grid-stride loops.
// The bandwidth-bound maps (relu, add, dropout and their backwards) are templates on V: V = 4 moves
// float4 (16-byte loads and stores; the launcher picks it when every pointer is 16-byte aligned,
// which CuPy allocations are), V = 1 plain floats. With V = 4 thread i handles elements 4i..4i+3,
// and the last n % 4 elements are done by the first threads of the grid after the vector loop.
// Vector loads go through __ldg (read-only path; under hostemu it also faults a misaligned float4).
#include "common.cuh"

// --------------------------------------------------------------------------- generic maps

// y = op(x) elementwise.
template <int V, class Op>
__device__ __forceinline__ void map1(const float* __restrict__ x, float* __restrict__ y, int n, Op op) {
    if constexpr (V == 4) {
        const int n4 = n >> 2;
        const float4* __restrict__ x4 = reinterpret_cast<const float4*>(x);
        float4* __restrict__ y4 = reinterpret_cast<float4*>(y);
        GRID_STRIDE_LOOP(i, n4) {
            const float4 a = __ldg(x4 + i);
            y4[i] = make_float4(op(a.x), op(a.y), op(a.z), op(a.w));
        }
        if (const unsigned k = grid_thread(); k < unsigned(n & 3)) {  // the n % 4 tail
            const int t = (n4 << 2) + int(k);
            y[t] = op(x[t]);
        }
    } else {
        GRID_STRIDE_LOOP(i, n) y[i] = op(x[i]);
    }
}

// c = op(a, b) elementwise.
template <int V, class Op>
__device__ __forceinline__ void map2(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                     int n, Op op) {
    if constexpr (V == 4) {
        const int n4 = n >> 2;
        const float4* __restrict__ a4 = reinterpret_cast<const float4*>(a);
        const float4* __restrict__ b4 = reinterpret_cast<const float4*>(b);
        float4* __restrict__ c4 = reinterpret_cast<float4*>(c);
        GRID_STRIDE_LOOP(i, n4) {
            const float4 u = __ldg(a4 + i), v = __ldg(b4 + i);
            c4[i] = make_float4(op(u.x, v.x), op(u.y, v.y), op(u.z, v.z), op(u.w, v.w));
        }
        if (const unsigned k = grid_thread(); k < unsigned(n & 3)) {
            const int t = (n4 << 2) + int(k);
            c[t] = op(a[t], b[t]);
        }
    } else {
        GRID_STRIDE_LOOP(i, n) c[i] = op(a[i], b[i]);
    }
}

struct ReluOp {  // NaN passes through, as np.maximum(x, 0) and torch.relu
    __device__ __forceinline__ float operator()(float v) const { return apply_relu(v); }
};
struct ReluBackwardOp {  // x may be the ReLU's input or its output: same sign test
    __device__ __forceinline__ float operator()(float dy, float x) const { return relu_grad(dy, x); }
};
struct AddOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MulOp {  // dropout's backward: dy * mask
    __device__ __forceinline__ float operator()(float a, float b) const { return a * b; }
};

template <int V>
__global__ void relu_fwd(const float* __restrict__ x, float* __restrict__ y, int n) { map1<V>(x, y, n, ReluOp()); }

template <int V>
__global__ void relu_bwd(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dx, int n) {
    map2<V>(dy, x, dx, n, ReluBackwardOp());
}

template <int V>
__global__ void add_fwd(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c, int n) {
    map2<V>(a, b, c, n, AddOp());
}

template <int V>
__global__ void mul_fwd(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c, int n) {
    map2<V>(a, b, c, n, MulOp());
}

// --------------------------------------------------------------------------- dropout

// SplitMix64's output function (Steele, Lea & Flood 2014): a bijective, well-mixed uint64.
__device__ __forceinline__ uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Counter-based draw for element i: output i+1 of the SplitMix64 sequence whose state starts at
// `key` (the launcher's splitmix64_mix(seed)), so any element can be drawn by any thread, in any
// order, with no state: the mask depends on (seed, i) only, not on the launch geometry or V.
// Kept when its top 53 bits r satisfy r >= threshold = ceil(p * 2^53), i.e. r / 2^53 >= p exactly.
__device__ __forceinline__ float dropout_keep(uint64_t key, uint64_t threshold, float scale, int i) {
    const uint64_t r = splitmix64_mix(key + uint64_t(i + 1) * 0x9E3779B97F4A7C15ull) >> 11;
    return r >= threshold ? scale : 0.f;
}

// mask[i] = scale (1/(1-p), computed on the host in float32) or 0; y[i] = x[i] * mask[i].
template <int V>
__global__ void dropout_fwd(const float* __restrict__ x, float* __restrict__ y, float* __restrict__ mask, int n,
                            uint64_t key, uint64_t threshold, float scale) {
    if constexpr (V == 4) {
        const int n4 = n >> 2;
        const float4* __restrict__ x4 = reinterpret_cast<const float4*>(x);
        float4* __restrict__ y4 = reinterpret_cast<float4*>(y);
        float4* __restrict__ m4 = reinterpret_cast<float4*>(mask);
        GRID_STRIDE_LOOP(i, n4) {
            const float4 a = __ldg(x4 + i);
            const int e = i << 2;
            const float4 m = make_float4(dropout_keep(key, threshold, scale, e), dropout_keep(key, threshold, scale, e + 1),
                                         dropout_keep(key, threshold, scale, e + 2), dropout_keep(key, threshold, scale, e + 3));
            m4[i] = m;
            y4[i] = make_float4(a.x * m.x, a.y * m.y, a.z * m.z, a.w * m.w);
        }
        if (const unsigned k = grid_thread(); k < unsigned(n & 3)) {
            const int t = (n4 << 2) + int(k);
            const float m = dropout_keep(key, threshold, scale, t);
            mask[t] = m;
            y[t] = x[t] * m;
        }
    } else {
        GRID_STRIDE_LOOP(i, n) {
            const float m = dropout_keep(key, threshold, scale, i);
            mask[i] = m;
            y[i] = x[i] * m;
        }
    }
}

// --------------------------------------------------------------------------- nearest upsampling

// y (planes, H*sh, W*sw) from x (planes, H, W): y[p, i, j] = x[p, i / sh, j / sw]. One thread per
// output element: consecutive threads write consecutive outputs (coalesced stores; the loads
// repeat each input sw times within a warp, served by the same cache lines).
extern "C" __global__ void upsample_nearest_fwd(const float* __restrict__ x, float* __restrict__ y, int planes, int h,
                                                int w, int sh, int sw) {
    const int ho = h * sh, wo = w * sw, n = planes * ho * wo;
    GRID_STRIDE_LOOP(t, n) {
        const int j = t % wo, r = t / wo, i = r % ho, p = r / ho;
        y[t] = x[(p * h + i / sh) * w + j / sw];
    }
}

// dx (planes, H, W) from dy (planes, H*sh, W*sw): each dx element sums its sh x sw block of dy,
// row-major (a gather: no atomics, deterministic).
extern "C" __global__ void upsample_nearest_bwd(const float* __restrict__ dy, float* __restrict__ dx, int planes, int h,
                                                int w, int sh, int sw) {
    const int n = planes * h * w, wo = w * sw;
    GRID_STRIDE_LOOP(t, n) {
        const int c = t % w, r = t / w, i = r % h, p = r / h;
        const float* __restrict__ src = dy + (size_t(p) * h * sh + size_t(i) * sh) * wo + size_t(c) * sw;
        float acc = 0.f;
        for (int a = 0; a < sh; ++a)
            for (int b = 0; b < sw; ++b) acc += src[a * wo + b];
        dx[t] = acc;
    }
}

// --------------------------------------------------------------------------- concat

// dst[r * dst_stride + dst_offset + k] = src[r * src_stride + src_offset + k] for r < rows, k < len:
// concat copies each input (N, Cs*HW) into its channel range of the output (N, C*HW), and
// concat_backward copies each range back out. With V = 4 every stride, offset and len is a multiple
// of 4 and the base pointers are 16-byte aligned (the launcher checks), so whole float4s move.
template <int V>
__global__ void copy_rows(const float* __restrict__ src, int src_stride, int src_offset, float* __restrict__ dst,
                          int dst_stride, int dst_offset, int rows, int len) {
    if constexpr (V == 4) {
        const int len4 = len >> 2, n4 = rows * len4;
        GRID_STRIDE_LOOP(t, n4) {
            const int r = t / len4, k = t - r * len4;
            reinterpret_cast<float4*>(dst + size_t(r) * dst_stride + dst_offset)[k] =
                __ldg(reinterpret_cast<const float4*>(src + size_t(r) * src_stride + src_offset) + k);
        }
    } else {
        const int n = rows * len;
        GRID_STRIDE_LOOP(t, n) {
            const int r = t / len, k = t - r * len;
            dst[size_t(r) * dst_stride + dst_offset + k] = src[size_t(r) * src_stride + src_offset + k];
        }
    }
}
