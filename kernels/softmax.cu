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

// The device's record of labels out of range, so the host never reads labels to check them (a
// synchronization on every loss call, and illegal inside a CUDA-graph capture):
//   err[0] first bad launch (-1: none), err[1] its row, err[2] its label (clamped to int),
//   err[3] the classes of that launch, err[4] loss launches since the host last reset the record.
// The host resets it and reads it where it synchronizes anyway (once an epoch in fit).
enum { XENT_ERR_LAUNCH, XENT_ERR_ROW, XENT_ERR_LABEL, XENT_ERR_CLASSES, XENT_ERR_COUNT, XENT_ERR_SIZE };

// Softmax cross-entropy of logits (n, c) against integer labels, and its gradient, row by row: one
// warp per row computes the stable log-sum-exp ls, row_loss[r] = -((x[label] - max) - ls) and the
// row of dlogits = (exp((x - max) - ls) - onehot) / n. The label only selects which column gets the
// one-hot term (no load is addressed by it), so a bad label cannot read outside its row: such a row
// gets a NaN loss and a zero gradient, and the first one is recorded in `err`.
// L: the labels' integer type (int or long long).
template <class L>
__global__ void softmax_xent(const float* __restrict__ logits, const L* __restrict__ labels,
                             float* __restrict__ dlogits, float* __restrict__ row_loss, int* __restrict__ err,
                             int n, int c, float nf) {
    const int lane = threadIdx.x & 31;
    WARP_ROW_LOOP(r, n) {
        const float* __restrict__ xr = logits + size_t(r) * c;
        float* __restrict__ dr = dlogits + size_t(r) * c;
        const L raw = labels[r];
        if (raw < 0 || raw >= L(c)) {  // warp-uniform: the whole warp holds row r
            for (int j = lane; j < c; j += 32) dr[j] = 0.f;
            if (lane == 0) {
                row_loss[r] = __int_as_float(0x7fc00000);  // NaN
                if (atomicCAS(&err[XENT_ERR_LAUNCH], -1, err[XENT_ERR_COUNT]) == -1) {
                    err[XENT_ERR_ROW] = r;
                    err[XENT_ERR_LABEL] = raw < L(-2147483647) ? -2147483647 : raw > L(2147483647) ? 2147483647 : int(raw);
                    err[XENT_ERR_CLASSES] = c;
                }
            }
            continue;
        }
        const int label = int(raw);
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
}

// loss = mean(row_loss) in a fixed order (each thread a fixed stride of rows, then the block tree):
// deterministic, no float atomics, and no state shared between launches (the rows kernel and this one
// are two launches, ordered by their stream). Then counts the launch in err[XENT_ERR_COUNT].
// One block of GPUCNN_THREADS.
extern "C" __global__ void __launch_bounds__(GPUCNN_THREADS)
xent_mean(const float* __restrict__ row_loss, float* __restrict__ loss, int* __restrict__ err, int n, float nf) {
    __shared__ float scratch[32];
    float acc = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += row_loss[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        *loss = acc / nf;
        err[XENT_ERR_COUNT] += 1;
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
