// softmax.cu: softmax / log-softmax along any dim, its backward, and the fused softmax cross-entropy.
//
// A contiguous array is seen as (outer, D, inner) with D the softmax dim; each softmax "row" is
// the D elements base + j*inner. Two layouts, two kernels each (the launcher picks):
//   *_rows     inner == 1 (the last dim, e.g. logits (N, classes)): one warp per row, lanes stride
//              over the row (coalesced), max and sum by warp shuffles;
//   *_strided  inner > 1 (e.g. channels of NCHW): one thread per row, adjacent threads on
//              adjacent inner positions, so each step over j reads a coalesced run.
// Stable: the row maximum is subtracted before exp. Warp-per-row loops are warp-uniform (a warp
// takes whole rows), so the full-warp shuffles always have all 32 lanes.
#include "common.cuh"

__device__ __forceinline__ float warp_allsum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;  // in every lane
}

__device__ __forceinline__ float warp_allmax(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The warp-per-row loop: warp `w` of the grid takes rows w, w + warps, ...
#define WARP_ROW_LOOP(r, rows)                                                             \
    for (int r = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5); r < (rows); \
         r += int((gridDim.x * blockDim.x) >> 5))

// --------------------------------------------------------------------------- forward

// out = softmax(x) (LOG: log_softmax) over rows of d contiguous elements; one warp per row.
template <bool LOG>
__global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ out, int rows, int d) {
    const int lane = threadIdx.x & 31;
    WARP_ROW_LOOP(r, rows) {
        const float* __restrict__ xr = x + size_t(r) * d;
        float* __restrict__ o = out + size_t(r) * d;
        float mx = xr[0];
        for (int j = lane; j < d; j += 32) mx = fmaxf(mx, xr[j]);
        mx = warp_allmax(mx);
        float s = 0.f;
        for (int j = lane; j < d; j += 32) s += expf(xr[j] - mx);
        s = warp_allsum(s);
        if (LOG) {
            const float ls = logf(s);
            for (int j = lane; j < d; j += 32) o[j] = (xr[j] - mx) - ls;
        } else {
            for (int j = lane; j < d; j += 32) o[j] = expf(xr[j] - mx) / s;
        }
    }
}

// The same for rows of d elements `inner` apart; one thread per row (outer * inner rows).
template <bool LOG>
__global__ void softmax_strided(const float* __restrict__ x, float* __restrict__ out, int rows, int d, int inner) {
    GRID_STRIDE_LOOP(r, rows) {
        const int o = r / inner, k = r - o * inner;
        const size_t base = size_t(o) * d * inner + k;
        const float* __restrict__ xr = x + base;
        float* __restrict__ yr = out + base;
        float mx = xr[0];
        for (int j = 1; j < d; ++j) mx = fmaxf(mx, xr[size_t(j) * inner]);
        float s = 0.f;
        for (int j = 0; j < d; ++j) s += expf(xr[size_t(j) * inner] - mx);
        if (LOG) {
            const float ls = logf(s);
            for (int j = 0; j < d; ++j) yr[size_t(j) * inner] = (xr[size_t(j) * inner] - mx) - ls;
        } else {
            for (int j = 0; j < d; ++j) yr[size_t(j) * inner] = expf(xr[size_t(j) * inner] - mx) / s;
        }
    }
}

// --------------------------------------------------------------------------- backward

// dx = y * (dy - sum(dy * y)) per row, given softmax's output y; one warp per contiguous row.
extern "C" __global__ void softmax_bwd_rows(const float* __restrict__ dy, const float* __restrict__ y,
                                            float* __restrict__ dx, int rows, int d) {
    const int lane = threadIdx.x & 31;
    WARP_ROW_LOOP(r, rows) {
        const size_t base = size_t(r) * d;
        float dot = 0.f;
        for (int j = lane; j < d; j += 32) dot += dy[base + j] * y[base + j];
        dot = warp_allsum(dot);
        for (int j = lane; j < d; j += 32) dx[base + j] = y[base + j] * (dy[base + j] - dot);
    }
}

// The same for strided rows; one thread per row.
extern "C" __global__ void softmax_bwd_strided(const float* __restrict__ dy, const float* __restrict__ y,
                                               float* __restrict__ dx, int rows, int d, int inner) {
    GRID_STRIDE_LOOP(r, rows) {
        const int o = r / inner, k = r - o * inner;
        const size_t base = size_t(o) * d * inner + k;
        float dot = 0.f;
        for (int j = 0; j < d; ++j) dot += dy[base + size_t(j) * inner] * y[base + size_t(j) * inner];
        for (int j = 0; j < d; ++j) {
            const size_t e = base + size_t(j) * inner;
            dx[e] = y[e] * (dy[e] - dot);
        }
    }
}

// --------------------------------------------------------------------------- fused loss

// Mean cross-entropy of softmax(logits) (n, c) against integer labels, and its gradient, in one
// launch. One warp per row: the stable log-sum-exp ls, row_loss[r] = -((x[label] - max) - ls), and
// the row of dlogits = (exp((x - max) - ls) - onehot) / n. Then the last block to finish (an
// integer atomic ticket on `counter`, zero at launch and left zero) sums row_loss in a fixed order
// (each thread a fixed stride of rows, then the block tree): the mean loss is deterministic, with
// no float atomics. L: the labels' integer type (int or long long).
template <class L>
__global__ void softmax_xent(const float* __restrict__ logits, const L* __restrict__ labels,
                             float* __restrict__ dlogits, float* row_loss, unsigned* counter, float* __restrict__ loss,
                             int n, int c, float nf) {
    __shared__ float scratch[32];
    __shared__ int last;
    const int lane = threadIdx.x & 31;
    WARP_ROW_LOOP(r, n) {
        const float* __restrict__ xr = logits + size_t(r) * c;
        float* __restrict__ dr = dlogits + size_t(r) * c;
        const int label = int(labels[r]);
        float mx = xr[0];
        for (int j = lane; j < c; j += 32) mx = fmaxf(mx, xr[j]);
        mx = warp_allmax(mx);
        float s = 0.f;
        for (int j = lane; j < c; j += 32) s += expf(xr[j] - mx);
        const float ls = logf(warp_allsum(s));
        for (int j = lane; j < c; j += 32) {
            const float logp = (xr[j] - mx) - ls;
            dr[j] = (expf(logp) - (j == label ? 1.f : 0.f)) / nf;
            if (j == label) row_loss[r] = -logp;
        }
    }
    __threadfence();  // this block's row losses are visible to every block before it takes a ticket
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last) {  // block-uniform: every thread of the last block reaches block_sum's barriers
        __threadfence();
        const volatile float* rl = row_loss;
        float acc = 0.f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) acc += rl[i];
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) {
            *loss = acc / nf;
            *counter = 0u;
        }
    }
}

// Training statistics without a host round trip: loss_sum[0] += loss[0] * rows and correct[0] += the
// rows whose first maximal logit is at their label. One block; a captured training step (CUDA graph)
// accumulates them on the device, and the host reads them once an epoch.
template <class L>
__global__ void __launch_bounds__(GPUCNN_THREADS)
xent_stats(const float* __restrict__ logits, const L* __restrict__ labels, const float* __restrict__ loss, int rows,
           int d, float* __restrict__ loss_sum, int* __restrict__ correct) {
    __shared__ float scratch[32];
    float hits = 0.f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float* row = logits + size_t(r) * d;
        int best = 0;
        for (int j = 1; j < d; ++j)
            if (row[j] > row[best]) best = j;
        hits += best == int(labels[r]) ? 1.f : 0.f;
    }
    hits = block_sum(hits, scratch);
    if (threadIdx.x == 0) {
        loss_sum[0] += loss[0] * float(rows);
        correct[0] += int(hits);
    }
}
