// conv.cu: 2-D convolution (cross-correlation, NCHW, weights K x C x R x S) as implicit GEMM.
//
// No im2col buffer: each direction is a GEMM whose operands are gathered from the tensors on the
// fly by the loaders below and multiplied by gemm::block_tile (gemm.cuh).
//
//   forward      y[n,k,p,q]  = b[k] + sum_{c,r,s} x[n,c,p*sh-pt+r, q*sw-pl+s] w[k,c,r,s]
//                GEMM M = N*P*Q (output pixels), N = K, K = R*S*C ordered (r, s, c); epilogue bias (+ ReLU)
//   data grad    dx[n,c,h,w] = sum_{k,r,s} dy[n,k,p,q] w[k,c,r,s] over p = (h+pt-r)/sh, q = (w+pl-s)/sw
//                integral and in range; GEMM M = N*H*W, N = C, K = R*S*K; epilogue: optional ReLU mask
//                (dx = 0 where the layer's input x <= 0: the backward of a ReLU feeding the conv).
//                With stride 1 it IS a forward convolution: of dy, with the filters flipped (r -> R-1-r,
//                s -> S-1-s) and transposed (k <-> c), padding R-1-pt and S-1-pl; it runs as one.
//   weight grad  dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] x[n,c,p*sh-pt+r, q*sw-pl+s]
//                GEMM M = R*S*C ordered (r, s, c), N = K, K = N*P*Q; split over gridDim.z (partials
//                reduced by splitk_reduce in split order: deterministic, no atomics)
//   bias grad    db[k] = sum_{n,p,q} dy[n,k,p,q]
//
// The weights enter the forward and data-gradient GEMMs as a K x N matrix in memory (conv_weight_gemm
// writes it each step: k = (r, s, c) rows, N padded to a multiple of 4 with zeros), so their loads are
// 16-byte copies at an incrementing address. Split-K (gridDim.z > 1) of a forward or data gradient
// writes raw partials in the output's layout; splitk_epilogue adds them and applies the epilogue.
//
// The forward gather keeps no division in its main loop: K runs over (r, s) outer and the channels
// c inner, BK = 16 channels a step, so one step is one filter tap (r, s) for every element a thread
// loads: a bit of a per-pixel mask (computed once: which taps fall inside the image) says whether
// the thread's pixel reads zeros, and each element's address is a per-thread offset plus a running
// one. It needs C % 16 == 0 and R*S < 32 (ConvFwd<true>: a 32-bit tap mask, with a zero bit left for the
// step past the end that the main loop may fetch); other shapes take ConvFwd<false>, which decomposes
// each k with multiply-shift divisions. Any stride, any (asymmetric) zero padding: only the
// top and left pads enter the index math, P and Q carry the rest. Indices are 32-bit (the launcher
// checks every tensor has < 2^31 elements).
#include "gemm.cuh"

struct ConvDims {
    int N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl;
};

// A forward convolution in its own terms: input N x Ci x Hi x Wi, output N x Co x Ho x Wo.
struct Geom {
    int N, Ci, Hi, Wi, Co, Ho, Wo, R, S, sh, sw, pt, pl;
};
__device__ __forceinline__ Geom forward_geom(const ConvDims& d) {
    return {d.N, d.C, d.H, d.W, d.K, d.P, d.Q, d.R, d.S, d.sh, d.sw, d.pt, d.pl};
}
// the stride-1 data gradient: dy convolved with the flipped, transposed filters
__device__ __forceinline__ Geom dgrad_geom(const ConvDims& d) {
    return {d.N, d.K, d.P, d.Q, d.C, d.H, d.W, d.R, d.S, 1, 1, d.R - 1 - d.pt, d.S - 1 - d.pl};
}

// Where C(m, n) goes in a forward-shaped GEMM: m = (image, output pixel), n = output channel, y NCHW.
// partial: a split-K partial, stored raw (splitk_epilogue applies the rest); else bias, ReLU, mask.
struct ConvOut {
    float* out;
    const float* bias;
    const float* mask;
    int relu, partial, Co, HoWo;
    FastDiv div_hw;

    __device__ float finish(int i, int n, float v) const {
        if (partial) return v;
        if (bias) v += __ldg(bias + n);
        if (relu) v = apply_relu(v);
        if (mask) v = relu_grad(v, __ldg(mask + i));
        return v;
    }
    __device__ void store(int m, int n, float v) const {
        int img, pq;
        div_hw.divmod(m, img, pq);
        const int i = (img * Co + n) * HoWo + pq;
        out[i] = finish(i, n, v);
    }
    // m % 4 == 0: with HoWo % 4 == 0 the four pixels are consecutive in one image (one 16-byte store)
    __device__ void store4(int m, int n, float4 v) const {
        if (HoWo % 4) {
            store(m, n, v.x); store(m + 1, n, v.y); store(m + 2, n, v.z); store(m + 3, n, v.w);
            return;
        }
        int img, pq;
        div_hw.divmod(m, img, pq);
        const int i = (img * Co + n) * HoWo + pq;
        *reinterpret_cast<float4*>(out + i) =
            make_float4(finish(i, n, v.x), finish(i + 1, n, v.y), finish(i + 2, n, v.z), finish(i + 3, n, v.w));
    }
};

// What the forward-shaped GEMMs share (the forward, the stride-1 and the general data gradient): B is the
// filters as the K x Npad matrix wg (conv_weight_gemm), C goes through a ConvOut; no per-step work.
struct ConvGemm {
    const float* wg;
    int M, N, Npad, Kg;
    ConvOut o;
    struct Step {};
    __device__ Step step(int, int) const { return {}; }
    __device__ void store(int m, int n, float v) const { o.store(m, n, v); }
    __device__ void store4(int m, int n, float4 v) const { o.store4(m, n, v); }

    template <int ROWS, int NT>
    struct BLoad : gemm::ViewLoad<ROWS, NT, gemm::ROW_VEC4> {
        __device__ BLoad(const ConvGemm& p, int n0, int t, int kt)
            : gemm::ViewLoad<ROWS, NT, gemm::ROW_VEC4>(gemm::View{p.wg, p.Npad, p.Kg, 1, p.Npad}, n0, t, kt) {}
    };
};

// The A elements a thread of a forward-shaped gather loads each step: the pixels m0 + am + j*NT (RPT of
// them) at the K offsets kf + i*KSTEP, element (i, j) at stage index slot(i, j).
template <int ROWS, int NT>
struct PixelSlots {
    static constexpr int L = ROWS * gemm::BK / NT;          // loads per thread per step
    static constexpr int RPT = ROWS > NT ? ROWS / NT : 1;   // pixels per thread
    static constexpr int KPT = L / RPT;                     // K offsets per pixel
    static constexpr int KSTEP = NT >= ROWS ? NT / ROWS : 1;
    static constexpr int P = ROWS + gemm::PAD;
    int am, kf;
    __device__ explicit PixelSlots(int t) : am(t % (NT < ROWS ? NT : ROWS)), kf(NT >= ROWS ? t / ROWS : 0) {}
    __device__ int slot(int i, int j) const { return kf * P + am + i * KSTEP * P + j * NT; }
};

// ------------------------------------------------------------------ forward (and stride-1 data gradient)
// A(m, k) = x[img, c, p*sh - pt + r, q*sw - pl + s], k = (r*S + s)*Ci + c; B(k, n) = wg[k * Npad + n].
// TAPS: C % BK == 0 and R*S < 32 (one tap per K step, a tap mask per pixel); else any shape.
template <bool TAPS>
struct ConvFwd : ConvGemm {
    const float* x;
    Geom g;

    template <int ROWS, int NT>
    struct ALoad : PixelSlots<ROWS, NT> {
        using Slots = PixelSlots<ROWS, NT>;
        using Slots::RPT, Slots::KPT, Slots::KSTEP, Slots::am, Slots::kf;
        const float* x;
        int HW, Hi, Wi, Ci, S, Kg;
        int row[RPT];         // offset of (img, 0, h0, w0): may be negative, only in-image taps are read
        unsigned taps[RPT];   // TAPS: bit r*S + s set when tap (r, s) of the pixel is inside the image
        int h0[RPT], w0[RPT]; // !TAPS: the window's corner
        // TAPS: the step's tap and channel block, kept incrementally; !TAPS: the step's first k
        int rs, s, c0, coff, k0;
        FastDiv div_c, div_s;

        __device__ ALoad(const ConvFwd& p, int m0, int t, int kt)
            : Slots(t), x(p.x), HW(p.g.Hi * p.g.Wi), Hi(p.g.Hi), Wi(p.g.Wi), Ci(p.g.Ci), S(p.g.S), Kg(p.Kg),
              div_c(p.g.Ci), div_s(p.g.S) {
            const Geom& g = p.g;
#pragma unroll
            for (int j = 0; j < RPT; ++j) {
                const int m = m0 + am + j * NT;
                const int PQ = g.Ho * g.Wo;
                const int img = m / PQ, pq = m % PQ, pp = pq / g.Wo, q = pq % g.Wo;
                h0[j] = pp * g.sh - g.pt;
                w0[j] = q * g.sw - g.pl;
                row[j] = img * g.Ci * HW + h0[j] * g.Wi + w0[j];
                taps[j] = 0;
                if (m < p.M) {
                    if (TAPS) {
                        for (int r = 0; r < g.R; ++r)
                            for (int ss = 0; ss < g.S; ++ss)
                                if (unsigned(h0[j] + r) < unsigned(g.Hi) && unsigned(w0[j] + ss) < unsigned(g.Wi))
                                    taps[j] |= 1u << (r * g.S + ss);
                    } else {
                        taps[j] = 1;
                    }
                }
            }
            const int blocks = g.Ci / gemm::BK;  // TAPS: channel blocks per tap
            if (TAPS) {
                rs = kt / blocks;
                c0 = (kt % blocks) * gemm::BK;
                s = rs % g.S;
                coff = (c0 + kf) * HW + (rs / g.S) * g.Wi + s;
            }
            k0 = kt * gemm::BK + kf;
        }

        template <class St>
        __device__ __forceinline__ void fetch(smem_t stage, const St&) {
            if (TAPS) {
#pragma unroll
                for (int j = 0; j < RPT; ++j) {
                    const bool ok = (taps[j] >> rs) & 1u;
                    const unsigned first = unsigned(row[j] + coff);
#pragma unroll
                    for (int i = 0; i < KPT; ++i)
                        cp_async4(smem_at(stage, this->slot(i, j)), x + (first + unsigned(i * KSTEP * HW)), ok);
                }
                // next step: the next BK channels, or the next tap
                c0 += gemm::BK;
                coff += gemm::BK * HW;
                if (c0 == Ci) {
                    c0 = 0;
                    ++rs;
                    ++s;
                    coff += 1 - Ci * HW;
                    if (s == S) {
                        s = 0;
                        coff += Wi - S;
                    }
                }
            } else {
#pragma unroll
                for (int i = 0; i < KPT; ++i) {
                    const int k = k0 + i * KSTEP;
                    int rs_, c, r, ss;
                    div_c.divmod(k < Kg ? k : 0, rs_, c);
                    div_s.divmod(rs_, r, ss);
#pragma unroll
                    for (int j = 0; j < RPT; ++j) {
                        const int h = h0[j] + r, w = w0[j] + ss;
                        const bool ok = taps[j] && k < Kg && unsigned(h) < unsigned(Hi) && unsigned(w) < unsigned(Wi);
                        cp_async4(smem_at(stage, this->slot(i, j)), x + unsigned(row[j] + c * HW + r * Wi + ss), ok);
                    }
                }
                k0 += gemm::BK;
            }
        }
        __device__ void stash(float*) {}
    };
};

// ------------------------------------------------------------------ data gradient, any stride
// A(m, k) = dy[img, kf, p, q] with (h + pt - r) = p*sh, (w + pl - s) = q*sw, k = (r'*S + s')*K + kf over the
// flipped tap (r', s') = (R-1-r, S-1-s), so that B is the same flipped weight matrix as the stride-1 one.
struct ConvDgrad : ConvGemm {
    const float* dy;
    ConvDims d;

    template <int ROWS, int NT>
    struct ALoad : PixelSlots<ROWS, NT> {
        using Slots = PixelSlots<ROWS, NT>;
        using Slots::RPT, Slots::KPT, Slots::KSTEP, Slots::am, Slots::kf;
        const ConvDgrad& p;
        int k0;
        int base[RPT], h[RPT], w[RPT];
        bool ok[RPT];
        FastDiv div_k, div_s, div_sh, div_sw;

        __device__ ALoad(const ConvDgrad& p_, int m0, int t, int kt)
            : Slots(t), p(p_), div_k(p_.d.K), div_s(p_.d.S), div_sh(p_.d.sh), div_sw(p_.d.sw) {
            const ConvDims& d = p.d;
#pragma unroll
            for (int j = 0; j < RPT; ++j) {
                const int m = m0 + am + j * NT, HW = d.H * d.W;
                const int img = m / HW, hw = m % HW;
                base[j] = img * d.K * d.P * d.Q;
                h[j] = hw / d.W + d.pt;
                w[j] = hw % d.W + d.pl;
                ok[j] = m < p.M;
            }
            k0 = kt * gemm::BK;
        }
        template <class St>
        __device__ __forceinline__ void fetch(smem_t stage, const St&) {
            const ConvDims& d = p.d;
#pragma unroll
            for (int i = 0; i < KPT; ++i) {
                const int k = k0 + kf + i * KSTEP;
                int rs, kk, r, s;
                div_k.divmod(k < p.Kg ? k : 0, rs, kk);
                div_s.divmod(rs, r, s);
                r = d.R - 1 - r;
                s = d.S - 1 - s;
#pragma unroll
                for (int j = 0; j < RPT; ++j) {
                    const int hp = h[j] - r, wq = w[j] - s;  // = p*sh and q*sw when this tap reached (h, w)
                    int pp = 0, q = 0, rp = 1, rq = 1;
                    if (hp >= 0 && wq >= 0) {
                        div_sh.divmod(hp, pp, rp);
                        div_sw.divmod(wq, q, rq);
                    }
                    const bool in = ok[j] && k < p.Kg && !rp && !rq && pp < d.P && q < d.Q;
                    cp_async4(smem_at(stage, this->slot(i, j)), p.dy + unsigned(base[j] + (kk * d.P + pp) * d.Q + q), in);
                }
            }
            k0 += gemm::BK;
        }
        __device__ void stash(float*) {}
    };
};

// ------------------------------------------------------------------ weight gradient
// A(m, k) = x[img, c, p*sh - pt + r, q*sw - pl + s] with m = (r*S + s)*C + c, k = (img, p, q);
// B(k, n) = dy[img, n, p, q]. Each thread loads one k of every step (its pixel, decomposed once a step
// in `step`, shared by both loaders) for a run of consecutive m (A) and n (B).
// BLOCKED: C and K multiples of the A and B run lengths, so a thread's A run is one tap (r, s) and its
// B run is all inside K or all outside: one bounds check a step for each.
template <bool BLOCKED>
struct ConvWgrad {
    const float* x;
    const float* dy;
    float* out;  // this split's partial, dw's layout (or dw itself)
    ConvDims d;
    int M, N, Kpix;  // Kpix = N*P*Q
    FastDiv div_pq, div_q, div_c, div_rs;

    struct Step {
        int xbase, hp, wq, dybase;
        bool ok;
    };
    __device__ Step step(int t, int kt) const {
        const int k = kt * gemm::BK + t % gemm::BK;
        int img, pq, pp, q;
        div_pq.divmod(k < Kpix ? k : 0, img, pq);
        div_q.divmod(pq, pp, q);
        const int hp = pp * d.sh, wq = q * d.sw;
        return {img * d.C * d.H * d.W + hp * d.W + wq, hp, wq, img * d.K * d.P * d.Q + pq, k < Kpix};
    }
    // C(m, n) = dw[n, c, r, s] with m = rs*C + c
    __device__ void store(int m, int n, float v) const {
        int rs, c;
        div_c.divmod(m, rs, c);
        out[(n * d.C + c) * (d.R * d.S) + rs] = v;
    }
    __device__ void store4(int m, int n, float4 v) const {
        store(m, n, v.x); store(m + 1, n, v.y); store(m + 2, n, v.z); store(m + 3, n, v.w);
    }

    template <int ROWS, int NT>
    struct ALoad {
        static constexpr int L = ROWS * gemm::BK / NT;  // consecutive m of one k
        static constexpr int P = ROWS + gemm::PAD;
        static constexpr int OUT = -0x4000;             // a tap offset no pixel brings inside the image
        const float* x;
        int at0, HW, H, W;
        int xoff[BLOCKED ? 1 : L];  // c*H*W + (r - pt)*W + (s - pl) of each m (BLOCKED: of the run's first)
        int tap[BLOCKED ? 1 : L];   // (r - pt) << 16 | (s - pl) & 0xffff; OUT << 16 past M

        __device__ ALoad(const ConvWgrad& p, int m0, int t, int) : x(p.x), HW(p.d.H * p.d.W), H(p.d.H), W(p.d.W) {
            const int k = t % gemm::BK, mb = (t / gemm::BK) * L;
            at0 = k * P + mb;
#pragma unroll
            for (int i = 0; i < (BLOCKED ? 1 : L); ++i) {
                const int m = m0 + mb + i;
                int rs, c, r, s;
                p.div_c.divmod(m < p.M ? m : 0, rs, c);
                p.div_rs.divmod(rs, r, s);
                const int rr = m < p.M ? r - p.d.pt : OUT, ss = s - p.d.pl;
                xoff[i] = c * HW + rr * W + ss;
                tap[i] = int(unsigned(rr) << 16 | (unsigned(ss) & 0xffffu));
            }
        }
        __device__ __forceinline__ bool inside(const Step& st, int i) const {
            return st.ok && unsigned(st.hp + (tap[i] >> 16)) < unsigned(H) && unsigned(st.wq + short(tap[i] & 0xffff)) < unsigned(W);
        }
        __device__ __forceinline__ void fetch(smem_t stage, const Step& st) {
            if (BLOCKED) {  // one tap for the whole run
                const bool ok = inside(st, 0);
                const float* first = x + unsigned(st.xbase + xoff[0]);
#pragma unroll
                for (int i = 0; i < L; ++i) cp_async4(smem_at(stage, at0 + i), advance(first, HW * 4u, i), ok);
            } else {
#pragma unroll
                for (int i = 0; i < L; ++i) cp_async4(smem_at(stage, at0 + i), x + unsigned(st.xbase + xoff[i]), inside(st, i));
            }
        }
        __device__ void stash(float*) {}
    };

    template <int ROWS, int NT>
    struct BLoad {
        static constexpr int L = ROWS * gemm::BK / NT;
        static constexpr int P = ROWS + gemm::PAD;
        const float* dy;
        int at0, PQ, nvalid;  // nvalid: how many of the run are < N

        __device__ BLoad(const ConvWgrad& p, int n0, int t, int) : dy(p.dy), PQ(p.d.P * p.d.Q) {
            const int k = t % gemm::BK, nb = (t / gemm::BK) * L;
            at0 = k * P + nb;
            dy += (n0 + nb) * PQ;
            nvalid = p.N - (n0 + nb);
        }
        __device__ __forceinline__ void fetch(smem_t stage, const Step& st) {
            const float* first = dy + unsigned(st.dybase);
#pragma unroll
            for (int i = 0; i < L; ++i)  // BLOCKED: K is a multiple of the run, which is all in or all out
                cp_async4(smem_at(stage, at0 + i), advance(first, PQ * 4u, i), st.ok && (BLOCKED ? nvalid > 0 : i < nvalid));
        }
        __device__ void stash(float*) {}
    };
};

#define CONV_ARGS int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int pt, int pl
#define CONV_DIMS ConvDims{N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl}

// The filters as the forward's (FLIP false) or the data gradient's (FLIP true) K x Npad B matrix:
//   forward  wg[((r*S + s)*C + c) * Npad + k] = w[k, c, r, s]                  (N = K filters)
//   flipped  wg[((r*S + s)*K + k) * Npad + c] = w[k, c, R-1-r, S-1-s]          (N = C channels)
// columns N..Npad-1 are zero.
template <bool FLIP>
__global__ void conv_weight_gemm(const float* __restrict__ w, float* __restrict__ wg, int K, int C, int RS, int Npad) {
    const int Ci = FLIP ? K : C, Nn = FLIP ? C : K;
    GRID_STRIDE_LOOP(i, RS * Ci * Npad) {
        const int n = i % Npad, row = i / Npad, c = row % Ci, rs = row / Ci;
        float v = 0.f;
        if (n < Nn) v = FLIP ? w[(c * C + n) * RS + (RS - 1 - rs)] : w[(n * C + c) * RS + rs];
        wg[i] = v;
    }
}

// y = conv(x, w) + b (ReLU when relu), or with splits > 1 (gridDim.z) raw partials into out + z * size(y).
// (The fast FP32 variants are held to 128 registers, two 256-thread blocks an SM; gemm::Tile::blocks.)
template <int BM, int BN, bool TF32, bool TAPS>
__global__ void __launch_bounds__(gemm::Tile<BM, BN>::NT, gemm::Tile<BM, BN>::blocks(TAPS, TF32))
conv2d_fwd(const float* __restrict__ x, const float* __restrict__ wg, const float* __restrict__ bias,
           float* __restrict__ out, int relu, int per, CONV_ARGS) {
    const ConvDims d = CONV_DIMS;
    const Geom g = forward_geom(d);
    const int M = N * P * Q, Npad = (K + 3) & ~3, Kg = R * S * C, steps = (Kg + gemm::BK - 1) / gemm::BK;
    const bool partial = gridDim.z > 1;
    const ConvFwd<TAPS> p{{wg, M, K, Npad, Kg,
                           ConvOut{out + (partial ? size_t(blockIdx.z) * M * K : 0), bias, nullptr, relu, partial, K,
                                   P * Q, FastDiv(P * Q)}},
                          x, g};
    const gemm::Split sp(steps, per);
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, sp.begin, sp.end);
}

// dx = the data gradient (0 where mask <= 0 when mask is given), or split partials as above.
// FWD: stride 1, K % 16 == 0 and R*S < 32: run as the forward convolution of dy with the flipped filters.
template <int BM, int BN, bool TF32, bool FWD>
__global__ void __launch_bounds__(gemm::Tile<BM, BN>::NT, gemm::Tile<BM, BN>::blocks(FWD, TF32))
conv2d_dgrad(const float* __restrict__ dy, const float* __restrict__ wg, const float* __restrict__ mask,
             float* __restrict__ out, int per, CONV_ARGS) {
    const ConvDims d = CONV_DIMS;
    const int M = N * H * W, Npad = (C + 3) & ~3, Kg = R * S * K, steps = (Kg + gemm::BK - 1) / gemm::BK;
    const bool partial = gridDim.z > 1;
    const ConvOut o{out + (partial ? size_t(blockIdx.z) * M * C : 0), nullptr, mask, 0, partial, C, H * W,
                    FastDiv(H * W)};
    const gemm::Split sp(steps, per);
    if constexpr (FWD) {
        const ConvFwd<true> p{{wg, M, C, Npad, Kg, o}, dy, dgrad_geom(d)};
        gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, sp.begin, sp.end);
    } else {
        const ConvDgrad p{{wg, M, C, Npad, Kg, o}, dy, d};
        gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, sp.begin, sp.end);
    }
}

// Split z covers K steps [z * per, (z + 1) * per) and writes ws + z * K*C*R*S.
template <int BM, int BN, bool TF32, bool BLOCKED>
__global__ void __launch_bounds__(gemm::Tile<BM, BN>::NT, gemm::Tile<BM, BN>::blocks(BLOCKED, TF32))
conv2d_wgrad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ ws, int per, CONV_ARGS) {
    const ConvDims d = CONV_DIMS;
    const int M = C * R * S, Kpix = N * P * Q;
    const ConvWgrad<BLOCKED> p{x, dy, ws + size_t(blockIdx.z) * M * K, d, M, K, Kpix,
                               FastDiv(P * Q), FastDiv(Q), FastDiv(C), FastDiv(S)};
    const gemm::Split sp((Kpix + gemm::BK - 1) / gemm::BK, per);
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, sp.begin, sp.end);
}

// ------------------------------------------------------------------ direct convolution (a network's first layer)
// With few input channels (C*R*S <= 32: an RGB or grey image under 3x3 filters) an implicit GEMM has
// too short a K to pay for its loads; these kernels convolve directly instead (FP32; stride 1; the filter
// width S a compile-time constant, the launcher instantiates 3; K <= 64 filters, 32 for the weight
// gradient). A block takes an 8 x 32 tile of output pixels of one image and every filter: the input tile
// it needs (C x (8+R-1) x (32+S-1), zeros outside the image) and the filters go to shared memory once,
// then each thread multiplies 8 filters by a row of 8 pixels, tap row by tap row: a row segment of 8+S-1
// inputs (three 16-byte loads) and 2 x S filter quads feed 64 x S FMAs.
namespace direct {
constexpr int TH = 8, TW = 32, PX = 8;                    // output tile, pixels a thread along a row
constexpr int WTH = 4;                                    // the weight gradient's tile height
template <int S>
struct Tile {
    static constexpr int SEG = (PX + S - 1 + 3) / 4 * 4;  // the row segment a thread reads, 16-byte loads
    static constexpr int TWP = (TW - PX) + SEG;           // input tile pitch (a multiple of 4)
};

// Stage the input tile: in[c][i][j] = x[n, c, h0 + i, w0 + j] (0 outside), i < rows, j < Tile<S>::TWP.
template <int S>
__device__ __forceinline__ void stage_input(float* in, const float* __restrict__ x, int n, int C, int H, int W,
                                            int h0, int w0, int rows) {
    constexpr int TWP = Tile<S>::TWP;
    for (int row = threadIdx.x / 32; row < C * rows; row += blockDim.x / 32) {  // one warp a row
        const int c = row / rows, i = row % rows, h = h0 + i;
        const float* src = x + (size_t(n) * C + c) * H * W + h * W;
        for (int j = threadIdx.x % 32; j < TWP; j += 32) {
            const int w = w0 + j;
            in[row * TWP + j] = unsigned(h) < unsigned(H) && unsigned(w) < unsigned(W) ? __ldg(src + w) : 0.f;
        }
    }
}
}  // namespace direct

// y = conv(x, w) + b (ReLU when relu): grid (tiles of 8 x 32 pixels, images), Kp / 8 * 32 threads.
template <int S>
__global__ void __launch_bounds__(256)
conv2d_fwd_direct(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                  float* __restrict__ y, int relu, int C, int H, int W, int K, int R, int P, int Q, int pt, int pl) {
    using T = direct::Tile<S>;
    constexpr int TH = direct::TH, TW = direct::TW, PX = direct::PX, TWP = T::TWP;
    __shared__ __align__(16) float in[(32 / S * TH + 32 / S) * TWP];  // C*(TH+R-1) <= C*TH + C*R rows
    __shared__ __align__(16) float wt[32 * 64];                        // [c][r][s][Kp], C*R*S <= 32, K <= 64
    const int Kp = (K + 7) & ~7, tiles_q = (Q + TW - 1) / TW, n = blockIdx.y;
    const int p0 = blockIdx.x / tiles_q * TH, q0 = blockIdx.x % tiles_q * TW, rows = TH + R - 1;
    for (int i = threadIdx.x; i < C * R * S * Kp; i += blockDim.x) {
        const int k = i % Kp, crs = i / Kp;
        wt[i] = k < K ? __ldg(w + k * C * R * S + crs) : 0.f;
    }
    direct::stage_input<S>(in, x, n, C, H, W, p0 - pt, q0 - pl, rows);
    __syncthreads();

    const int g = threadIdx.x / 32, row = threadIdx.x % 32 / (TW / PX), cg = threadIdx.x % (TW / PX);
    float acc[PX][8];
#pragma unroll
    for (int i = 0; i < PX; ++i)
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[i][k] = 0.f;
    const float* seg_at = in + row * TWP + cg * PX;
    const float* w_at = wt + g * 8;
    int off = 0, r = 0;  // the input row of (channel, filter row) cr, kept incrementally
    for (int cr = 0; cr < C * R; ++cr) {  // (channel, filter row): the main loop
        float seg[T::SEG];
        const float* src = seg_at + off;
#pragma unroll
        for (int j = 0; j < T::SEG; j += 4) {
            const float4 v = lds128(src + j);
            seg[j] = v.x; seg[j + 1] = v.y; seg[j + 2] = v.z; seg[j + 3] = v.w;
        }
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const float* wp = w_at + (cr * S + s) * Kp;
            const float4 wa = lds128(wp), wb = lds128(wp + 4);
            const float wk[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
            for (int i = 0; i < PX; ++i)
#pragma unroll
                for (int k = 0; k < 8; ++k) acc[i][k] = fmaf(seg[i + s], wk[k], acc[i][k]);
        }
        off += TWP;
        if (++r == R) {  // the next channel's first row
            r = 0;
            off += (rows - R) * TWP;
        }
    }
    const int p = p0 + row, q = q0 + cg * PX;
    if (p >= P) return;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int kk = g * 8 + k;
        if (kk >= K) break;
        const float b = bias ? __ldg(bias + kk) : 0.f;
        float v[PX];
#pragma unroll
        for (int i = 0; i < PX; ++i) v[i] = relu ? apply_relu(acc[i][k] + b) : acc[i][k] + b;
        float* out = y + ((size_t(n) * K + kk) * P + p) * Q + q;
        if (Q % 4 == 0 && q + PX <= Q) {  // 16-byte aligned: q is a multiple of 8, Q of 4
            *reinterpret_cast<float4*>(out) = make_float4(v[0], v[1], v[2], v[3]);
            *reinterpret_cast<float4*>(out + 4) = make_float4(v[4], v[5], v[6], v[7]);
        } else {
#pragma unroll
            for (int i = 0; i < PX; ++i)
                if (q + i < Q) out[i] = v[i];
        }
    }
}

// Weight gradient, directly (K <= 32): block b sums tiles b, b + gridDim.x, ... (4 x 32 pixels of one image) into
// its partial out[b][k][c][r][s]; splitk_reduce adds the partials. A thread owns 8 filters x the S taps of
// one (channel, filter row) and a share of the tile's rows (G of them share the work, reduced in shared
// memory); per row segment: 8+S-1 inputs and 8 x 8 output gradients feed 64 x S FMAs.
template <int S>
__global__ void __launch_bounds__(256)
conv2d_wgrad_direct(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out, int N,
                    int C, int H, int W, int K, int R, int P, int Q, int pt, int pl, int G) {
    using T = direct::Tile<S>;
    constexpr int TH = direct::WTH, TW = direct::TW, PX = direct::PX, TWP = T::TWP;
    __shared__ __align__(16) float in[(32 / S * TH + 32 / S) * TWP];  // C*(TH+R-1) <= C*TH + C*R rows
    __shared__ __align__(16) float g_tile[32 * TH * TW];               // dy tile [Kp <= 32][TH][TW]
    __shared__ float part[32 * 32];                                    // Kp x C*R*S
    const int Kp = (K + 7) & ~7, tiles_q = (Q + TW - 1) / TW, tiles_p = (P + TH - 1) / TH;
    const int tiles = N * tiles_p * tiles_q, rows = TH + R - 1;
    // thread role: filter group g, (channel, filter row) cr, row share j of G
    const int role = threadIdx.x / G, j = threadIdx.x % G, g = role / (C * R), cr = role % (C * R);
    const bool active = role < Kp / 8 * C * R;
    float acc[8][S];
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int s = 0; s < S; ++s) acc[k][s] = 0.f;

    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int n = tile / (tiles_p * tiles_q), t2 = tile % (tiles_p * tiles_q);
        const int p0 = t2 / tiles_q * TH, q0 = t2 % tiles_q * TW;
        __syncthreads();  // the previous tile's reads are done
        direct::stage_input<S>(in, x, n, C, H, W, p0 - pt, q0 - pl, rows);
        for (int row = threadIdx.x / 32; row < Kp * TH; row += blockDim.x / 32) {
            const int k = row / TH, p = p0 + row % TH, q = q0 + threadIdx.x % 32;
            g_tile[row * TW + threadIdx.x % 32] =
                k < K && p < P && q < Q ? __ldg(dy + ((size_t(n) * K + k) * P + p) * Q + q) : 0.f;
        }
        __syncthreads();
        if (!active) continue;
        const int c = cr / R, r = cr - c * R;
        for (int rc = j; rc < TH * (TW / PX); rc += G) {  // (row, column group) shares: the main loop
            const int row = rc / (TW / PX), cg = rc % (TW / PX);
            float seg[T::SEG];
            const float* src = in + (c * rows + row + r) * TWP + cg * PX;
#pragma unroll
            for (int i = 0; i < T::SEG; i += 4) {
                const float4 v = lds128(src + i);
                seg[i] = v.x; seg[i + 1] = v.y; seg[i + 2] = v.z; seg[i + 3] = v.w;
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float* gp = g_tile + ((g * 8 + k) * TH + row) * TW + cg * PX;
                const float4 ga = lds128(gp), gb = lds128(gp + 4);
                const float gv[PX] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
#pragma unroll
                for (int s = 0; s < S; ++s)
#pragma unroll
                    for (int i = 0; i < PX; ++i) acc[k][s] = fmaf(gv[i], seg[i + s], acc[k][s]);
            }
        }
    }
    // the G shares of a role, summed in a fixed order (deterministic), then this block's partial
    const int CRS = C * R * S;
    for (int jj = 0; jj < G; ++jj) {
        __syncthreads();
        if (active && j == jj) {
#pragma unroll
            for (int k = 0; k < 8; ++k)
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    float* d = part + ((g * 8 + k) * C * R + cr) * S + s;
                    *d = jj == 0 ? acc[k][s] : *d + acc[k][s];
                }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < K * CRS; i += blockDim.x) out[size_t(blockIdx.x) * K * CRS + i] = part[i];
}

// db[k] = sum over n < N, j < PQ of dy[(n * K + k) * PQ + j]. Block (k, z) sums the images
// z, z + gridDim.y, ... into out[z * K + k]: with gridDim.y > 1 these are partials for
// splitk_reduce (so a layer with few channels still spreads over every SM), else db itself.
extern "C" __global__ void __launch_bounds__(GPUCNN_THREADS)
conv2d_bias_grad(const float* __restrict__ dy, float* __restrict__ out, int N, int K, int PQ) {
    __shared__ float scratch[32];
    const int k = blockIdx.x;
    float v = 0.f;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const float* row = dy + (n * K + k) * PQ;
        for (int j = threadIdx.x; j < PQ; j += blockDim.x) v += row[j];
    }
    v = block_sum(v, scratch);
    if (threadIdx.x == 0) out[blockIdx.y * K + k] = v;
}
