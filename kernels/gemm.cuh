// gemm.cuh: the block-level GEMM main loop every convolution and linear kernel runs.
//
// C(M x N) = A(M x K) B(K x N), where A and B are never materialized: a "problem" struct says
// how to fetch A(m, k) and B(k, n) from the real tensors (implicit GEMM: the im2col matrix of a
// convolution exists only as index arithmetic) and what to do with each C(m, n) (the epilogue:
// bias, ReLU, a ReLU mask, a split-K partial). conv.cu and dense.cu define the problems.
//
// A block of 256 threads owns a BM x BN tile of C and walks K in steps of BK = 8:
//   global -> registers (the next tile, prefetched while the current one is multiplied)
//          -> shared memory (double-buffered: one __syncthreads per K step)
//          -> registers -> FMA (exact FP32: each thread an 8x8, 8x4, ... outer-product block)
//                       or mma.sync m16n8k8 TF32 tensor cores (each warp a 16*MF x 32 tile).
// In TF32 mode the values are rounded to TF32 (cvt.rna) once, when stored to shared memory.
//
// A problem P provides:
//   int M, N, K;
//   static constexpr bool A_K_FAST, B_K_FAST;  // which index consecutive threads load (coalescing)
//   static constexpr bool B_VEC4;              // B(k..k+3, n) is one aligned float4 (K-contiguous
//                                              // rows, K % 4 == 0, 16-byte aligned: the launcher checks)
//   struct Row; Row row(int m) const;          // per-m index work, done once per thread, not per K step
//   float a(const Row&, int k) const;          // A(m, k), 0 outside the matrix (the row knows m < M)
//   struct Col; Col col(int n) const;
//   float b(const Col&, int k) const;          // B(k, n), 0 outside
//   float4 b4(const Col&, int k) const;        // when B_VEC4: B(k..k+3, n), k % 4 == 0
//   void store(int m, int n, float v) const;   // C(m, n) = v, called only for m < M, n < N
#pragma once
#include "common.cuh"

namespace gemm {

constexpr int NT = GPUCNN_THREADS;
constexpr int BK = 8;
constexpr int PAD = 8;  // row pitch = 8 mod 32 words: conflict-free mma fragment reads

template <int BM, int BN>
struct Shape {
    static_assert(BM == 64 || BM == 128, "BM is 64 or 128");
    static_assert(BN == 32 || BN == 64 || BN == 128, "BN is 32, 64 or 128");
    // FP32: thread grid (BM/TM) x (BN/TN) = 256 threads, each a TM x TN block of C
    static constexpr int TM = BM == 128 ? 8 : 4;
    static constexpr int TN = BM * BN / (NT * TM);
    // TF32: 8 warps as WARPS_M x WARPS_N, each a WM x 32 tile = MF x 4 mma tiles of 16 x 8
    static constexpr int WARPS_N = BN / 32;
    static constexpr int WARPS_M = 8 / WARPS_N;
    static constexpr int WM = BM / WARPS_M;
    static constexpr int MF = WM / 16;
    static_assert(TN >= 2 && MF >= 1, "unsupported tile");
    // loads per thread per K step
    static constexpr int LA = BK * BM / NT;
    static constexpr int LB = (BK * BN + NT - 1) / NT;
    static constexpr int LB4 = (BK * BN / 4 + NT - 1) / NT;
};

template <int BM, int BN, bool TF32, class P>
__device__ __forceinline__ void block_tile(const P& p, int m0, int n0, int kt_begin, int kt_end) {
    using S = Shape<BM, BN>;
    __shared__ __align__(16) float As[2][BK][BM + PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];
    const int t = threadIdx.x;

    // ---- which A and B elements this thread loads each K step (fixed m / n, k advancing)
    int am[S::LA], ak[S::LA];
    typename P::Row rows[S::LA];
#pragma unroll
    for (int i = 0; i < S::LA; ++i) {
        if (P::A_K_FAST) { ak[i] = t % BK; am[i] = t / BK + i * (NT / BK); }
        else             { am[i] = t % BM; ak[i] = t / BM + i * (NT / BM); }
        rows[i] = p.row(m0 + am[i]);
    }
    constexpr int LB = P::B_VEC4 ? S::LB4 : S::LB;
    int bn[LB], bk[LB];
    typename P::Col cols[LB];
#pragma unroll
    for (int i = 0; i < LB; ++i) {
        if (P::B_VEC4)        { bk[i] = (t % (BK / 4)) * 4; bn[i] = t / (BK / 4) + i * (NT * 4 / BK); }
        else if (P::B_K_FAST) { bk[i] = t % BK; bn[i] = t / BK + i * (NT / BK); }
        else                  { bn[i] = t % BN; bk[i] = t / BN + i * (NT / BN); }
        cols[i] = p.col(bn[i] < BN ? n0 + bn[i] : p.N);  // lanes past BN (vector loads of a narrow tile) idle
    }
    float ra[S::LA];
    float rb[P::B_VEC4 ? 4 * LB : LB];

    auto load = [&](int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < S::LA; ++i) ra[i] = p.a(rows[i], k0 + ak[i]);
#pragma unroll
        for (int i = 0; i < LB; ++i) {
            if (P::B_VEC4) {
                float4 v = bn[i] < BN ? p.b4(cols[i], k0 + bk[i]) : make_float4(0.f, 0.f, 0.f, 0.f);
                rb[4 * i] = v.x; rb[4 * i + 1] = v.y; rb[4 * i + 2] = v.z; rb[4 * i + 3] = v.w;
            } else {
                rb[i] = p.b(cols[i], k0 + bk[i]);
            }
        }
    };
    auto cvt = [](float v) { return TF32 ? __uint_as_float(to_tf32(v)) : v; };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < S::LA; ++i) As[buf][ak[i]][am[i]] = cvt(ra[i]);
#pragma unroll
        for (int i = 0; i < LB; ++i) {
            if (bn[i] >= BN) continue;
            if (P::B_VEC4)
#pragma unroll
                for (int j = 0; j < 4; ++j) Bs[buf][bk[i] + j][bn[i]] = cvt(rb[4 * i + j]);
            else
                Bs[buf][bk[i]][bn[i]] = cvt(rb[i]);
        }
    };

    // ---- accumulators
    constexpr int TM = S::TM, TN = S::TN, MF = S::MF;
    // TF32: acc[i * 4 + j] is the 4-float fragment of mma tile (i, j); FP32: acc[i][j] is C(m_i, n_j)
    float acc[TF32 ? MF * 4 : TM][TF32 ? 4 : TN];
#pragma unroll
    for (int i = 0; i < (TF32 ? MF * 4 : TM); ++i)
#pragma unroll
        for (int j = 0; j < (TF32 ? 4 : TN); ++j) acc[i][j] = 0.f;
    const int tx = t % (BM / TM), ty = t / (BM / TM);            // FP32 thread grid
    const int lane = t % 32, warp = t / 32, g = lane / 4, tg = lane % 4;  // TF32 fragments
    const int wm0 = (warp % S::WARPS_M) * S::WM, wn0 = (warp / S::WARPS_M) * 32;

    if (kt_begin < kt_end) {
        load(kt_begin);
        stash(0);
    }
    __syncthreads();
    for (int kt = kt_begin; kt < kt_end; ++kt) {
        const int buf = (kt - kt_begin) & 1;
        if (kt + 1 < kt_end) load(kt + 1);  // global loads in flight during the math below
        if constexpr (TF32) {
            unsigned fa[MF][4], fb[4][2];
#pragma unroll
            for (int f = 0; f < MF; ++f) {
                const int m = wm0 + f * 16 + g;
                fa[f][0] = __float_as_uint(As[buf][tg][m]);
                fa[f][1] = __float_as_uint(As[buf][tg][m + 8]);
                fa[f][2] = __float_as_uint(As[buf][tg + 4][m]);
                fa[f][3] = __float_as_uint(As[buf][tg + 4][m + 8]);
            }
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                const int n = wn0 + f * 8 + g;
                fb[f][0] = __float_as_uint(Bs[buf][tg][n]);
                fb[f][1] = __float_as_uint(Bs[buf][tg + 4][n]);
            }
#pragma unroll
            for (int i = 0; i < MF; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    mma_tf32_16x8x8(acc[i * 4 + j], fa[i], fb[j]);
        } else {
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                float a[TM], b[TN];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float* pa = &As[buf][k][h * (BM / 2) + tx * (TM / 2)];
                    const float* pb = &Bs[buf][k][h * (BN / 2) + ty * (TN / 2)];
                    if (TM / 2 == 4) {
                        float4 v = *reinterpret_cast<const float4*>(pa);
                        a[h * 4] = v.x; a[h * 4 + 1] = v.y; a[h * 4 + 2] = v.z; a[h * 4 + 3] = v.w;
                    } else {
#pragma unroll
                        for (int i = 0; i < TM / 2; ++i) a[h * (TM / 2) + i] = pa[i];
                    }
                    if (TN / 2 == 4) {
                        float4 v = *reinterpret_cast<const float4*>(pb);
                        b[h * 4] = v.x; b[h * 4 + 1] = v.y; b[h * 4 + 2] = v.z; b[h * 4 + 3] = v.w;
                    } else {
#pragma unroll
                        for (int j = 0; j < TN / 2; ++j) b[h * (TN / 2) + j] = pb[j];
                    }
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        if (kt + 1 < kt_end) stash(buf ^ 1);
        __syncthreads();
    }

    // ---- epilogue: every element of C this thread holds goes through the problem's store
    if constexpr (TF32) {
#pragma unroll
        for (int i = 0; i < MF; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int m = m0 + wm0 + i * 16 + g + (r >= 2 ? 8 : 0);
                    const int n = n0 + wn0 + j * 8 + 2 * tg + (r & 1);
                    if (m < p.M && n < p.N) p.store(m, n, acc[i * 4 + j][r]);
                }
    } else {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n0 + (j / (TN / 2)) * (BN / 2) + ty * (TN / 2) + j % (TN / 2);
            if (n >= p.N) continue;
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const int m = m0 + (i / (TM / 2)) * (BM / 2) + tx * (TM / 2) + i % (TM / 2);
                if (m < p.M) p.store(m, n, acc[i][j]);
            }
        }
    }
}

}  // namespace gemm

// Split-K: out[i] = sum over s < splits of ws[s * n + i], in split order (deterministic).
extern "C" __global__ void splitk_reduce(const float* __restrict__ ws, float* __restrict__ out, int n, int splits) {
    GRID_STRIDE_LOOP(i, n) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) v += ws[size_t(s) * n + i];
        out[i] = v;
    }
}
