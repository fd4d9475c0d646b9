// dense.cu: the linear layer y = x w^T + b (x: B x I, w: O x I, y: B x O) and its gradients, as
// GEMMs on gemm::block_tile (gemm.cuh). Each is laid out so that C's m index is the one that is
// contiguous in memory where C is stored (16-byte epilogue stores):
//   forward      C = y^T:  M = O, N = B, K = I;  A(o, i) = w[o, i], B(i, b) = x[b, i]
//   data grad    C = dx^T: M = I, N = B, K = O;  A(i, o) = w[o, i], B(o, b) = dy[b, o]
//   weight grad  C = dw^T: M = I, N = O, K = B;  A(i, b) = x[b, i], B(b, o) = dy[b, o]
//   bias grad    db[o] = sum_b dy[b, o]
// Every operand is a strided matrix (gemm::ViewLoad). VEC4 (the launcher checks I % 4 == 0,
// O % 4 == 0 and 16-byte aligned arrays): 16-byte loads, cp.async straight into shared memory where the
// operand's contiguous index is the tile's row index, LDG.128 into registers where it is K.
// Any of them may be split over K (gridDim.z): split z writes its raw partial of C to ws + z * M * N
// in the output's layout, reduced by splitk_reduce (gradients) or splitk_epilogue (forward: + bias, ReLU).
#include "gemm.cuh"

// C(m, n) stored at out[n * M + m]; with bias / ReLU unless a split partial.
struct LinearOut {
    float* out;
    const float* bias;
    int relu, partial, M;
    __device__ float finish(int m, float v) const {
        if (partial) return v;
        if (bias) v += __ldg(bias + m);
        if (relu) v = apply_relu(v);
        return v;
    }
    __device__ void store(int m, int n, float v) const { out[n * M + m] = finish(m, v); }
    __device__ void store4(int m, int n, float4 v) const {
        if (M % 4) {
            store(m, n, v.x); store(m + 1, n, v.y); store(m + 2, n, v.z); store(m + 3, n, v.w);
            return;
        }
        *reinterpret_cast<float4*>(out + n * M + m) =
            make_float4(finish(m, v.x), finish(m + 1, v.y), finish(m + 2, v.z), finish(m + 3, v.w));
    }
};

// A GEMM of two strided operands: A(m, k) from view a, B(k, n) from view b.
template <int LA, int LB>
struct LinearProblem {
    gemm::View a, b;
    int M, N;
    LinearOut o;
    struct Step {};
    __device__ Step step(int, int) const { return {}; }
    __device__ void store(int m, int n, float v) const { o.store(m, n, v); }
    __device__ void store4(int m, int n, float4 v) const { o.store4(m, n, v); }
    template <int ROWS, int NT>
    struct ALoad : gemm::ViewLoad<ROWS, NT, LA> {
        __device__ ALoad(const LinearProblem& p, int m0, int t, int kt) : gemm::ViewLoad<ROWS, NT, LA>(p.a, m0, t, kt) {}
    };
    template <int ROWS, int NT>
    struct BLoad : gemm::ViewLoad<ROWS, NT, LB> {
        __device__ BLoad(const LinearProblem& p, int n0, int t, int kt) : gemm::ViewLoad<ROWS, NT, LB>(p.b, n0, t, kt) {}
    };
};

template <int BM, int BN, bool TF32, class P>
__device__ __forceinline__ void linear_run(const P& p, int K, int per) {
    const gemm::Split sp((K + gemm::BK - 1) / gemm::BK, per);
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, sp.begin, sp.end);
}

// the 16-byte FP32 variants are held to two 256-thread blocks an SM (gemm::Tile::blocks)
#define LINEAR_BOUNDS __launch_bounds__(gemm::Tile<BM, BN>::NT, gemm::Tile<BM, BN>::blocks(VEC4, TF32))
#define PARTIAL_OUT(out, size) (gridDim.z > 1 ? (out) + size_t(blockIdx.z) * (size) : (out))

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void LINEAR_BOUNDS linear_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ bias, float* __restrict__ out, int relu, int per,
                                         int B, int I, int O) {
    constexpr int L = VEC4 ? gemm::K_VEC4 : gemm::K;
    const LinearProblem<L, L> p{{w, O, I, I, 1}, {x, B, I, I, 1}, O, B,
                                {PARTIAL_OUT(out, O * B), bias, relu, gridDim.z > 1, O}};
    linear_run<BM, BN, TF32>(p, I, per);
}

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void LINEAR_BOUNDS linear_dgrad(const float* __restrict__ dy, const float* __restrict__ w,
                                           float* __restrict__ out, int per, int B, int I, int O) {
    const LinearProblem<VEC4 ? gemm::ROW_VEC4 : gemm::ROW, VEC4 ? gemm::K_VEC4 : gemm::K> p{
        {w, I, O, 1, I}, {dy, B, O, O, 1}, I, B, {PARTIAL_OUT(out, I * B), nullptr, 0, gridDim.z > 1, I}};
    linear_run<BM, BN, TF32>(p, O, per);
}

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void LINEAR_BOUNDS linear_wgrad(const float* __restrict__ x, const float* __restrict__ dy,
                                           float* __restrict__ ws, int per, int B, int I, int O) {
    constexpr int L = VEC4 ? gemm::ROW_VEC4 : gemm::ROW;
    const LinearProblem<L, L> p{{x, I, B, 1, I}, {dy, O, B, 1, O}, I, O,
                                {ws + size_t(blockIdx.z) * I * O, nullptr, 0, 1, I}};
    linear_run<BM, BN, TF32>(p, B, per);
}

// db[o] = sum over b of dy[b, o]: one thread per o (consecutive o: coalesced rows).
extern "C" __global__ void linear_bias_grad(const float* __restrict__ dy, float* __restrict__ db, int B, int O) {
    GRID_STRIDE_LOOP(o, O) {
        float v = 0.f;
        for (int b = 0; b < B; ++b) v += dy[b * O + o];
        db[o] = v;
    }
}
