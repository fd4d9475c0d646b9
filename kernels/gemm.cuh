// gemm.cuh: the block-level GEMM every convolution and linear kernel runs.
//
// C(M x N) = A(M x K) B(K x N), where A and B are never materialized: a "problem" struct says how a
// thread fetches its share of each K step of A and B (implicit GEMM: the im2col matrix of a
// convolution exists only as index arithmetic) and what to do with each C(m, n) (the epilogue:
// bias, ReLU, a ReLU mask, a split-K partial). conv.cu and dense.cu define the problems.
//
// A block of Tile<BM, BN>::NT threads owns a BM x BN tile of C and walks K in steps of BK = 16:
//   global -> shared memory, double-buffered: while the block multiplies step kt, the loads of step
//             kt + 1 are in flight (cp.async straight into shared memory, or LDG into registers
//             stored after the math where a 16-byte load must be scattered); one __syncthreads a step
//          -> registers -> FMA (exact FP32: each thread an 8x8 block of C, so one 16-byte shared
//             load feeds 16 FMAs) or mma.sync m16n8k8 TF32 tensor cores (each
//             warp a WM x 32 tile of 16x8 mma tiles; values rounded to TF32 (cvt.rna) as they leave
//             shared memory).
// The loaders keep their addresses incrementally: no division in the main loop (a problem may
// do its per-step work once per thread in `step`, shared by its A and B loaders).
//
// A problem P provides:
//   int M, N;                                  // C's size (K is the loaders' business)
//   struct Step; Step step(int t, int kt) const; // per-thread work of K step kt, before its loads
//   template <int ROWS, int NT> struct ALoad;  // ALoad(p, m0, t, kt_begin); fetch(smem_t stage,
//   template <int ROWS, int NT> struct BLoad;  //   const Step&): issue step's loads and advance;
//                                              //   stash(float* stage): registers -> shared (or nothing)
//   void store(int m, int n, float v) const;   // C(m, n) = v, called only for m < M, n < N
//   void store4(int m, int n, float4 v) const; // C(m..m+3, n), m % 4 == 0, m + 3 < M, n < N
// A stage is a BK x (ROWS + PAD) array: element (k, row) at stage[k * (ROWS + PAD) + row].
#pragma once
#include "common.cuh"

namespace gemm {

constexpr int BK = 16;
constexpr int PAD = 8;  // row pitch = 8 mod 32 words: conflict-free mma fragment reads; 16-byte rows

// The tiles: 8x8 of C per thread, so the narrow tiles run fewer threads (down to one warp for
// 64x32) rather than thinner per-thread blocks: two 16-byte shared loads feed 16 FMAs in every tile.
template <int BM, int BN>
struct Tile {
    static_assert((BM == 128 && (BN == 128 || BN == 64 || BN == 32)) || (BM == 64 && (BN == 64 || BN == 32)),
                  "unsupported tile");
    static constexpr int TM = 8;
    static constexpr int NT = BM * BN / 64;  // threads
    static constexpr int TN = BM * BN / (NT * TM);
    static constexpr int TX = BM / TM;                       // threads along m (NT / TX along n)
    // TF32: NT / 32 warps as WARPS_M x WARPS_N, each a WM x 32 tile = MF x 4 mma tiles of 16 x 8
    static constexpr int WARPS = NT / 32;
    static constexpr int WARPS_N = BN / 32 < WARPS ? BN / 32 : WARPS;
    static constexpr int WARPS_M = WARPS / WARPS_N;
    static constexpr int WM = BM / WARPS_M, MF = WM / 16;
    // __launch_bounds__ of the fast FP32 variants: 256 threads <= 128 registers (two blocks an SM),
    // 128 threads <= 168 (three), 64 <= 128 (eight), the one-warp tile <= 255
    static constexpr int MIN_BLOCKS = NT == 256 ? 2 : NT == 128 ? 3 : 8;
    // for __launch_bounds__: the fast FP32 variants get MIN_BLOCKS; the general gathers and the TF32
    // fragments may take more registers (fewer blocks an SM) rather than spill
    __host__ __device__ static constexpr int blocks(bool fast, bool tf32) { return fast && !tf32 ? MIN_BLOCKS : 1; }
    static_assert(TN == TM && MF >= 1 && WARPS_M * WARPS_N == WARPS, "unsupported tile");
};

// ----------------------------------------------------------------------------------------------
// Where load i (< L) of thread t goes when the NT threads of a block cover a PERIOD x (L*NT/PERIOD)
// grid in order: e = t + i*NT, inner index e % PERIOD, outer e / PERIOD. PERIOD and NT are powers of
// two, so each splits into the thread's part (t's, computed once) and load i's part (a constant).
template <int PERIOD, int NT>
struct Grid {
    __device__ static constexpr int inner(int i) { return NT >= PERIOD ? 0 : (i % (PERIOD / NT)) * NT; }
    __device__ static constexpr int outer(int i) { return NT >= PERIOD ? i * (NT / PERIOD) : i / (PERIOD / NT); }
};

// Loaders of a strided operand X(row, k) = base[row * rs + k * ks], row < rows, k < K.
// Four layouts, by which index is contiguous in memory and whether 16-byte loads are allowed
// (the launcher checks the contiguous size % 4 == 0 and 16-byte alignment for the VEC4 ones):
//   ROW_VEC4 (rs == 1): quads of 4 rows at one k, cp.async 16 bytes straight into the stage row;
//   ROW      (rs == 1): one float, consecutive threads consecutive rows (cp.async 4 bytes);
//   K_VEC4   (ks == 1): quads of 4 k at one row, LDG.128 into registers, 4 shared stores after the math;
//   K        (ks == 1): one float, consecutive threads consecutive k (cp.async 4 bytes).
// Per load and step: a bounds test, an address (32-bit offset, one wide multiply-add), the load.
enum Layout { ROW_VEC4, ROW, K_VEC4, K };

struct View {
    const float* base;
    int rows, K, rs, ks;
};

template <int ROWS, int NT, int LAYOUT>
struct ViewLoad {
    static constexpr bool VEC = LAYOUT == ROW_VEC4 || LAYOUT == K_VEC4;
    static constexpr bool ROW_FAST = LAYOUT == ROW_VEC4 || LAYOUT == ROW;
    static constexpr int W = VEC ? 4 : 1;                       // floats per load
    static constexpr int L = ROWS * BK / (W * NT);              // loads per thread per step
    static constexpr int P = ROWS + PAD;
    static constexpr int PERIOD = ROW_FAST ? ROWS / W : BK / W;
    using G = Grid<PERIOD, NT>;
    static_assert(L >= 1 && ROWS * BK % (W * NT) == 0, "tile too small for this loader");
    // load i: row r0 + dr(i), k kk + dk(i)
    __device__ static constexpr int dr(int i) { return ROW_FAST ? G::inner(i) * W : G::outer(i); }
    __device__ static constexpr int dk(int i) { return ROW_FAST ? G::outer(i) : G::inner(i) * W; }
    const float* base;
    unsigned off;     // the thread's first element this step (an offset into base)
    int rows_left;    // rows - the thread's first row
    int k_left;       // K - the thread's first k this step
    int rs, ks, at;   // at: the thread's first element in the stage
    float4 reg[LAYOUT == K_VEC4 ? L : 1];

    __device__ ViewLoad(const View& v, int r0, int t, int kt) : base(v.base), rs(v.rs), ks(v.ks) {
        const int e = t % (NT >= PERIOD ? PERIOD : NT), eo = NT >= PERIOD ? t / PERIOD : 0;
        const int r = ROW_FAST ? e * W : eo, k = ROW_FAST ? eo : e * W;
        rows_left = v.rows - (r0 + r);
        k_left = v.K - (kt * BK + k);
        off = unsigned((r0 + r) * rs + (kt * BK + k) * ks);
        at = k * P + r;
    }
    template <class Step>
    __device__ __forceinline__ void fetch(smem_t stage, const Step&) {
#pragma unroll
        for (int i = 0; i < L; ++i) {
            const bool ok = dr(i) < rows_left && dk(i) < k_left;  // a VEC4 quad is whole: its size % 4 == 0
            // with NT >= PERIOD a thread's loads step along one index only: equally spaced addresses
            const float* src = NT >= PERIOD ? advance(base + off, unsigned(NT / PERIOD) * unsigned(ROW_FAST ? ks : rs) * 4u, i)
                                            : base + (off + unsigned(dr(i) * rs + dk(i) * ks));
            if (LAYOUT == K_VEC4)
                reg[i] = ok ? __ldg(reinterpret_cast<const float4*>(src)) : make_float4(0.f, 0.f, 0.f, 0.f);
            else if (LAYOUT == ROW_VEC4)
                cp_async16(smem_at(stage, at + dk(i) * P + dr(i)), src, ok);
            else
                cp_async4(smem_at(stage, at + dk(i) * P + dr(i)), src, ok);
        }
        off += unsigned(BK * ks);
        k_left -= BK;
    }
    __device__ __forceinline__ void stash(float* stage) {
        if (LAYOUT == K_VEC4) {
#pragma unroll
            for (int i = 0; i < L; ++i) {
                float* d = stage + at + dk(i) * P + dr(i);
                d[0] = reg[i].x;
                d[P] = reg[i].y;
                d[2 * P] = reg[i].z;
                d[3 * P] = reg[i].w;
            }
        }
    }
};

// ----------------------------------------------------------------------------------------------
template <int BM, int BN, bool TF32, class P>
__device__ __forceinline__ void block_tile(const P& p, int m0, int n0, int kt_begin, int kt_end) {
    using T = Tile<BM, BN>;
    constexpr int AP = BM + PAD, BP = BN + PAD;
    __shared__ __align__(16) float As[2][BK * AP];
    __shared__ __align__(16) float Bs[2][BK * BP];
    const int t = threadIdx.x;
    const smem_t as_addr = smem_address(&As[0][0]), bs_addr = smem_address(&Bs[0][0]);
    typename P::template ALoad<BM, T::NT> la(p, m0, t, kt_begin);
    typename P::template BLoad<BN, T::NT> lb(p, n0, t, kt_begin);

    constexpr int TM = T::TM, TN = T::TN, MF = T::MF;
    // TF32: acc[i * 4 + j] is the 4-float fragment of mma tile (i, j); FP32: acc[i][j] is C(m_i, n_j)
    float acc[TF32 ? MF * 4 : TM][TF32 ? 4 : TN];
#pragma unroll
    for (int i = 0; i < (TF32 ? MF * 4 : TM); ++i)
#pragma unroll
        for (int j = 0; j < (TF32 ? 4 : TN); ++j) acc[i][j] = 0.f;
    const int tx = t % T::TX, ty = t / T::TX;                             // FP32 thread grid
    const int lane = t % 32, warp = t / 32, g = lane / 4, tg = lane % 4;  // TF32 fragments
    const int wm0 = (warp % T::WARPS_M) * T::WM, wn0 = (warp / T::WARPS_M) * 32;

    // the math of one K step, on the stage at a_s / b_s
    auto multiply = [&](const float* a_s, const float* b_s) {
        if constexpr (TF32) {
#pragma unroll
            for (int k8 = 0; k8 < BK; k8 += 8) {  // one m16n8k8 product per 8 of the step's K
                const float* a8 = a_s + k8 * AP;
                const float* b8 = b_s + k8 * BP;
                unsigned fa[MF][4], fb[4][2];
#pragma unroll
                for (int f = 0; f < MF; ++f) {
                    const int m = wm0 + f * 16 + g;
                    fa[f][0] = to_tf32(a8[tg * AP + m]);
                    fa[f][1] = to_tf32(a8[tg * AP + m + 8]);
                    fa[f][2] = to_tf32(a8[(tg + 4) * AP + m]);
                    fa[f][3] = to_tf32(a8[(tg + 4) * AP + m + 8]);
                }
#pragma unroll
                for (int f = 0; f < 4; ++f) {
                    const int n = wn0 + f * 8 + g;
                    fb[f][0] = to_tf32(b8[tg * BP + n]);
                    fb[f][1] = to_tf32(b8[(tg + 4) * BP + n]);
                }
#pragma unroll
                for (int i = 0; i < MF; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma_tf32_16x8x8(acc[i * 4 + j], fa[i], fb[j]);
            }
        } else {
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                float a[TM], b[TN];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float* pa = a_s + k * AP + h * (BM / 2) + tx * (TM / 2);
                    const float* pb = b_s + k * BP + h * (BN / 2) + ty * (TN / 2);
                    const float4 va = lds128(pa);
                    const float4 vb = lds128(pb);
                    a[h * 4] = va.x; a[h * 4 + 1] = va.y; a[h * 4 + 2] = va.z; a[h * 4 + 3] = va.w;
                    b[h * 4] = vb.x; b[h * 4 + 1] = vb.y; b[h * 4 + 2] = vb.z; b[h * 4 + 3] = vb.w;
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    };

    if (kt_begin < kt_end) {
        const auto st = p.step(t, kt_begin);
        la.fetch(as_addr, st);
        lb.fetch(bs_addr, st);
        la.stash(As[0]);
        lb.stash(Bs[0]);
    }
    cp_async_wait_all();
    __syncthreads();
    // Step kt on stage `cur` while step kt + 1's loads fill the other stage. The main loop runs it
    // twice an iteration, so the stages' addresses are constants and the loop has no branch but its
    // own; it may fetch one step past the end (every loader bounds-checks K, and a split's next step
    // is in-bounds data never multiplied); an odd last step is multiplied after it.
    auto step = [&](int kt, int cur) {
        const auto st = p.step(t, kt + 1);
        la.fetch(smem_at(as_addr, (cur ^ 1) * BK * AP), st);
        lb.fetch(smem_at(bs_addr, (cur ^ 1) * BK * BP), st);
        multiply(As[cur], Bs[cur]);
        la.stash(As[cur ^ 1]);
        lb.stash(Bs[cur ^ 1]);
        cp_async_wait_all();
        __syncthreads();
    };
    int kt = kt_begin;
    for (; kt + 1 < kt_end; kt += 2) {
        step(kt, 0);
        step(kt + 1, 1);  // on the last pair this fetches step kt_end: in-bounds, zero-filled or unused
    }
    if (kt < kt_end) multiply(As[0], Bs[0]);  // an odd last step

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
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + h * (BM / 2) + tx * (TM / 2);
                if (m + 3 < p.M) {
                    p.store4(m, n, make_float4(acc[h * 4][j], acc[h * 4 + 1][j], acc[h * 4 + 2][j], acc[h * 4 + 3][j]));
                } else {
#pragma unroll
                    for (int i = 0; i < TM / 2; ++i)
                        if (m + i < p.M) p.store(m + i, n, acc[h * (TM / 2) + i][j]);
                }
            }
        }
    }
}

// K steps [begin, end) of split blockIdx.z when each split takes `per` of the `steps`.
struct Split {
    int begin, end;
    __device__ Split(int steps, int per) {
        begin = blockIdx.z * per;
        end = begin + per < steps ? begin + per : steps;
    }
};

}  // namespace gemm

// Split-K: out[i] = sum over s < splits of ws[s * n + i], in split order (deterministic).
extern "C" __global__ void splitk_reduce(const float* __restrict__ ws, float* __restrict__ out, int n, int splits) {
    GRID_STRIDE_LOOP(i, n) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) v += ws[size_t(s) * n + i];
        out[i] = v;
    }
}

// Split-K with the epilogue the split GEMM could not apply: out[i] = the sum of the partials, plus
// bias[(i / inner) % channels] (a conv's or a linear layer's bias), ReLU when relu, 0 where mask[i] <= 0
// (a ReLU's backward fused into a data gradient). Null bias or mask: none. splits 0 (a GEMM whose K is 0:
// no input channels) writes the epilogue of a zero sum, ws unread.
extern "C" __global__ void splitk_epilogue(const float* __restrict__ ws, float* __restrict__ out, int n, int splits,
                                           const float* __restrict__ bias, int inner, int channels, int relu,
                                           const float* __restrict__ mask) {
    GRID_STRIDE_LOOP(i, n) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) v += ws[size_t(s) * n + i];
        if (bias) v += bias[(i / inner) % channels];
        if (relu) v = apply_relu(v);
        if (mask) v = relu_grad(v, mask[i]);
        out[i] = v;
    }
}
