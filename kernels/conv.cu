// conv.cu: 2-D convolution (cross-correlation, NCHW, weights K x C x R x S) as implicit GEMM.
//
// No im2col buffer: each direction is a GEMM whose operands are gathered from the tensors on
// the fly by the problem structs below and multiplied by gemm::block_tile (gemm.cuh).
//
//   forward      y[n,k,p,q]  = b[k] + sum_{c,r,s} x[n,c,p*sh-pt+r, q*sw-pl+s] w[k,c,r,s]
//                GEMM M = N*P*Q (output pixels), N = K, K = C*R*S; epilogue bias (+ ReLU)
//   data grad    dx[n,c,h,w] = sum_{k,r,s} dy[n,k,p,q] w[k,c,r,s] over p = (h+pt-r)/sh, q = (w+pl-s)/sw
//                integral and in range; GEMM M = N*H*W, N = C, K = K*R*S; epilogue: optional ReLU
//                mask (dx = 0 where the layer's input x <= 0: the backward of a ReLU feeding the conv)
//   weight grad  dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] x[n,c,p*sh-pt+r, q*sw-pl+s]
//                GEMM M = C*R*S, N = K, K = N*P*Q, split over gridDim.z: block z writes its partial
//                sum to ws + z*K*C*R*S, and splitk_reduce adds the partials (deterministic; no atomics)
//   bias grad    db[k] = sum_{n,p,q} dy[n,k,p,q]: one block per k
//
// Any stride, any (asymmetric) zero padding: only the top and left pads enter the index math,
// P and Q carry the rest. Indices are 32-bit (the launcher checks every tensor has < 2^31 elements).
#include "gemm.cuh"

struct ConvDims {
    int N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl;
};

// ------------------------------------------------------------------ forward
// VEC4: weights fetched as float4 (C*R*S % 4 == 0 and w 16-byte aligned; the launcher checks).
template <bool VEC4>
struct FwdProblem {
    static constexpr bool A_K_FAST = false;  // consecutive threads: consecutive output pixels
    static constexpr bool B_K_FAST = true;   // weights: consecutive k of one filter
    static constexpr bool B_VEC4 = VEC4;
    const float* x;
    const float* w;
    const float* bias;
    float* y;
    ConvDims d;
    int M, N, K, relu;
    FastDiv divPQ, divQ, divRS, divS;

    __device__ FwdProblem(const float* x_, const float* w_, const float* b_, float* y_, ConvDims d_, int relu_)
        : x(x_), w(w_), bias(b_), y(y_), d(d_), M(d_.N * d_.P * d_.Q), N(d_.K), K(d_.C * d_.R * d_.S),
          relu(relu_), divPQ(d_.P * d_.Q), divQ(d_.Q), divRS(d_.R * d_.S), divS(d_.S) {}

    struct Row { int base, h0, w0; bool ok; };
    __device__ Row row(int m) const {
        int n, pq, p, q;
        divPQ.divmod(m < M ? m : 0, n, pq);
        divQ.divmod(pq, p, q);
        return {n * d.C * d.H * d.W, p * d.sh - d.pt, q * d.sw - d.pl, m < M};
    }
    __device__ float a(const Row& r, int k) const {
        int c, rs, fr, fs;
        divRS.divmod(k, c, rs);
        divS.divmod(rs, fr, fs);
        const int h = r.h0 + fr, ww = r.w0 + fs;
        const bool in = r.ok && k < K && unsigned(h) < unsigned(d.H) && unsigned(ww) < unsigned(d.W);
        return in ? __ldg(x + r.base + (c * d.H + h) * d.W + ww) : 0.f;
    }
    struct Col { int base; bool ok; };
    __device__ Col col(int n) const { return {n * K, n < N}; }
    __device__ float b(const Col& c, int k) const { return c.ok && k < K ? __ldg(w + c.base + k) : 0.f; }
    __device__ float4 b4(const Col& c, int k) const {
        return c.ok && k < K ? __ldg(reinterpret_cast<const float4*>(w + c.base + k)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __device__ void store(int m, int n, float v) const {
        int img, pq;
        divPQ.divmod(m, img, pq);
        if (bias) v += __ldg(bias + n);
        if (relu) v = fmaxf(v, 0.f);
        y[(img * N + n) * (d.P * d.Q) + pq] = v;
    }
};

// ------------------------------------------------------------------ data gradient
struct DgradProblem {
    static constexpr bool A_K_FAST = false;  // consecutive input pixels
    static constexpr bool B_K_FAST = false;  // consecutive input channels c of w[k, c, r, s]
    static constexpr bool B_VEC4 = false;
    const float* dy;
    const float* w;
    const float* mask;  // the layer's input x when a ReLU produced it (dx = 0 where x <= 0), else null
    float* dx;
    ConvDims d;
    int M, N, K;
    FastDiv divHW, divW, divRS, divS, divSh, divSw;

    __device__ DgradProblem(const float* dy_, const float* w_, const float* mask_, float* dx_, ConvDims d_)
        : dy(dy_), w(w_), mask(mask_), dx(dx_), d(d_), M(d_.N * d_.H * d_.W), N(d_.C), K(d_.K * d_.R * d_.S),
          divHW(d_.H * d_.W), divW(d_.W), divRS(d_.R * d_.S), divS(d_.S), divSh(d_.sh), divSw(d_.sw) {}

    struct Row { int base, h, w; bool ok; };
    __device__ Row row(int m) const {
        int n, hw, h, ww;
        divHW.divmod(m < M ? m : 0, n, hw);
        divW.divmod(hw, h, ww);
        return {n * d.K * d.P * d.Q, h + d.pt, ww + d.pl, m < M};
    }
    __device__ float a(const Row& r, int k) const {
        int kf, rs, fr, fs, p, q, rp, rq;
        divRS.divmod(k, kf, rs);
        divS.divmod(rs, fr, fs);
        const int hp = r.h - fr, wq = r.w - fs;  // = p*sh and q*sw when this tap reached (h, w)
        if (!r.ok || k >= K || hp < 0 || wq < 0) return 0.f;
        divSh.divmod(hp, p, rp);
        divSw.divmod(wq, q, rq);
        if (rp || rq || p >= d.P || q >= d.Q) return 0.f;
        return __ldg(dy + r.base + (kf * d.P + p) * d.Q + q);
    }
    struct Col { int c; bool ok; };
    __device__ Col col(int n) const { return {n, n < N}; }
    __device__ float b(const Col& c, int k) const {
        if (!c.ok || k >= K) return 0.f;
        int kf, rs;
        divRS.divmod(k, kf, rs);
        return __ldg(w + (kf * d.C + c.c) * (d.R * d.S) + rs);
    }
    __device__ float4 b4(const Col&, int) const { return make_float4(0.f, 0.f, 0.f, 0.f); }
    __device__ void store(int m, int n, float v) const {
        int img, hw;
        divHW.divmod(m, img, hw);
        const int i = (img * N + n) * (d.H * d.W) + hw;
        if (mask && !(__ldg(mask + i) > 0.f)) v = 0.f;
        dx[i] = v;
    }
};

// ------------------------------------------------------------------ weight gradient
struct WgradProblem {
    static constexpr bool A_K_FAST = true;  // consecutive output pixels (coalesced x and dy reads)
    static constexpr bool B_K_FAST = true;
    static constexpr bool B_VEC4 = false;
    const float* x;
    const float* dy;
    float* out;  // this split's partial (or dw itself when there is one split)
    ConvDims d;
    int M, N, K;
    FastDiv divPQ, divQ, divRS, divS;

    __device__ WgradProblem(const float* x_, const float* dy_, float* out_, ConvDims d_)
        : x(x_), dy(dy_), out(out_), d(d_), M(d_.C * d_.R * d_.S), N(d_.K), K(d_.N * d_.P * d_.Q),
          divPQ(d_.P * d_.Q), divQ(d_.Q), divRS(d_.R * d_.S), divS(d_.S) {}

    struct Row { int base, r, s; bool ok; };
    __device__ Row row(int m) const {
        int c, rs, fr, fs;
        divRS.divmod(m < M ? m : 0, c, rs);
        divS.divmod(rs, fr, fs);
        return {c * d.H * d.W, fr - d.pt, fs - d.pl, m < M};
    }
    __device__ float a(const Row& r, int k) const {
        int n, pq, p, q;
        divPQ.divmod(k < K ? k : 0, n, pq);
        divQ.divmod(pq, p, q);
        const int h = p * d.sh + r.r, ww = q * d.sw + r.s;
        const bool in = r.ok && k < K && unsigned(h) < unsigned(d.H) && unsigned(ww) < unsigned(d.W);
        return in ? __ldg(x + n * d.C * d.H * d.W + r.base + h * d.W + ww) : 0.f;
    }
    struct Col { int k; bool ok; };
    __device__ Col col(int n) const { return {n, n < N}; }
    __device__ float b(const Col& c, int k) const {
        if (!c.ok || k >= K) return 0.f;
        int n, pq;
        divPQ.divmod(k, n, pq);
        return __ldg(dy + (n * N + c.k) * (d.P * d.Q) + pq);
    }
    __device__ float4 b4(const Col&, int) const { return make_float4(0.f, 0.f, 0.f, 0.f); }
    __device__ void store(int m, int n, float v) const { out[n * M + m] = v; }
};

#define CONV_ARGS int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int pt, int pl
#define CONV_DIMS ConvDims{N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl}

template <int BM, int BN, bool TF32, bool VEC4>
__global__ void __launch_bounds__(GPUCNN_THREADS)
conv2d_fwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
           float* __restrict__ y, int relu, CONV_ARGS) {
    const FwdProblem<VEC4> p(x, w, bias, y, CONV_DIMS, relu);
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, 0, (p.K + gemm::BK - 1) / gemm::BK);
}

template <int BM, int BN, bool TF32>
__global__ void __launch_bounds__(GPUCNN_THREADS)
conv2d_dgrad(const float* __restrict__ dy, const float* __restrict__ w, const float* __restrict__ mask,
             float* __restrict__ dx, CONV_ARGS) {
    const DgradProblem p(dy, w, mask, dx, CONV_DIMS);
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, 0, (p.K + gemm::BK - 1) / gemm::BK);
}

// Split z covers K steps [z * steps_per_split, (z + 1) * steps_per_split).
template <int BM, int BN, bool TF32>
__global__ void __launch_bounds__(GPUCNN_THREADS)
conv2d_wgrad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ ws,
             int steps_per_split, CONV_ARGS) {
    WgradProblem p(x, dy, ws, CONV_DIMS);
    p.out = ws + size_t(blockIdx.z) * p.M * p.N;
    const int steps = (p.K + gemm::BK - 1) / gemm::BK;
    const int begin = blockIdx.z * steps_per_split;
    const int end = begin + steps_per_split < steps ? begin + steps_per_split : steps;
    gemm::block_tile<BM, BN, TF32>(p, blockIdx.x * BM, blockIdx.y * BN, begin, end);
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
