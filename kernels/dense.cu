// dense.cu: the linear layer y = x w^T + b (x: B x I, w: O x I, y: B x O) and its gradients,
// as GEMMs on gemm::block_tile (gemm.cuh). Each is laid out so that C's m index is the one that
// is contiguous in memory where C is stored (coalesced epilogue stores):
//   forward      C = y^T:  M = O, N = B, K = I;  A(o, i) = w[o, i], B(i, b) = x[b, i]
//   data grad    C = dx^T: M = I, N = B, K = O;  A(i, o) = w[o, i], B(o, b) = dy[b, o]
//   weight grad  C = dw^T: M = I, N = O, K = B;  A(i, b) = x[b, i], B(b, o) = dy[b, o], split over
//                gridDim.z like the convolution's (partials reduced by splitk_reduce)
//   bias grad    db[o] = sum_b dy[b, o]
#include "gemm.cuh"

template <bool VEC4>
struct LinearFwd {
    static constexpr bool A_K_FAST = true, B_K_FAST = true, B_VEC4 = VEC4;
    const float *x, *w, *bias;
    float* y;
    int M, N, K, relu;
    struct Row { int base; bool ok; };
    __device__ Row row(int m) const { return {m * K, m < M}; }
    __device__ float a(const Row& r, int k) const { return r.ok && k < K ? __ldg(w + r.base + k) : 0.f; }
    struct Col { int base; bool ok; };
    __device__ Col col(int n) const { return {n * K, n < N}; }
    __device__ float b(const Col& c, int k) const { return c.ok && k < K ? __ldg(x + c.base + k) : 0.f; }
    __device__ float4 b4(const Col& c, int k) const {
        return c.ok && k < K ? __ldg(reinterpret_cast<const float4*>(x + c.base + k)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __device__ void store(int m, int n, float v) const {
        if (bias) v += __ldg(bias + m);
        if (relu) v = fmaxf(v, 0.f);
        y[n * M + m] = v;
    }
};

template <bool VEC4>
struct LinearDgrad {
    static constexpr bool A_K_FAST = false, B_K_FAST = true, B_VEC4 = VEC4;
    const float *dy, *w;
    float* dx;
    int M, N, K;  // I, B, O
    struct Row { int i; bool ok; };
    __device__ Row row(int m) const { return {m, m < M}; }
    __device__ float a(const Row& r, int k) const { return r.ok && k < K ? __ldg(w + k * M + r.i) : 0.f; }
    struct Col { int base; bool ok; };
    __device__ Col col(int n) const { return {n * K, n < N}; }
    __device__ float b(const Col& c, int k) const { return c.ok && k < K ? __ldg(dy + c.base + k) : 0.f; }
    __device__ float4 b4(const Col& c, int k) const {
        return c.ok && k < K ? __ldg(reinterpret_cast<const float4*>(dy + c.base + k)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __device__ void store(int m, int n, float v) const { dx[n * M + m] = v; }
};

struct LinearWgrad {
    static constexpr bool A_K_FAST = false, B_K_FAST = false, B_VEC4 = false;
    const float *x, *dy;
    float* out;
    int M, N, K;  // I, O, B
    struct Row { int i; bool ok; };
    __device__ Row row(int m) const { return {m, m < M}; }
    __device__ float a(const Row& r, int k) const { return r.ok && k < K ? __ldg(x + k * M + r.i) : 0.f; }
    struct Col { int o; bool ok; };
    __device__ Col col(int n) const { return {n, n < N}; }
    __device__ float b(const Col& c, int k) const { return c.ok && k < K ? __ldg(dy + k * N + c.o) : 0.f; }
    __device__ float4 b4(const Col&, int) const { return make_float4(0.f, 0.f, 0.f, 0.f); }
    __device__ void store(int m, int n, float v) const { out[n * M + m] = v; }
};

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void __launch_bounds__(GPUCNN_THREADS)
linear_fwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
           float* __restrict__ y, int relu, int B, int I, int O) {
    const LinearFwd<VEC4> p{x, w, bias, y, O, B, I, relu};
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, 0, (I + gemm::BK - 1) / gemm::BK);
}

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void __launch_bounds__(GPUCNN_THREADS)
linear_dgrad(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int I, int O) {
    const LinearDgrad<VEC4> p{dy, w, dx, I, B, O};
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, 0, (O + gemm::BK - 1) / gemm::BK);
}

template <int BM, int BN, bool TF32>
__global__ void __launch_bounds__(GPUCNN_THREADS)
linear_wgrad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ ws, int steps_per_split,
             int B, int I, int O) {
    const LinearWgrad p{x, dy, ws + size_t(blockIdx.z) * I * O, I, O, B};
    const int steps = (B + gemm::BK - 1) / gemm::BK;
    const int begin = blockIdx.z * steps_per_split;
    const int end = begin + steps_per_split < steps ? begin + steps_per_split : steps;
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, begin, end);
}

// db[o] = sum over b of dy[b, o]: one thread per o (consecutive o: coalesced rows).
extern "C" __global__ void linear_bias_grad(const float* __restrict__ dy, float* __restrict__ db, int B, int O) {
    GRID_STRIDE_LOOP(o, O) {
        float v = 0.f;
        for (int b = 0; b < B; ++b) v += dy[b * O + o];
        db[o] = v;
    }
}
