// pool.cu: max pooling (with argmax indices, optionally fused with a preceding ReLU) and average
// pooling, forward and backward.
//
// Arrays (N, C, H, W) are seen as (planes, H, W), planes = N*C; windows kh x kw, stride (sh, sw),
// no padding, floor (the output P x Q comes resolved from gpucnn.functional). Forward kernels run
// one thread per output element and backward kernels one thread per input element (grid-stride
// loops): the backwards gather dy over the windows that contain their element instead of
// scattering into dx, so there are no atomics and the sums are deterministic. The one exception:
// max_pool_bwd_disjoint, for windows that do not overlap, runs one thread per pooled output and
// writes its window's cell of dx (no element is in two windows, so nothing is summed).
#include "common.cuh"

// The device's record of max-pool indices outside their own window, so the host never reads indices
// back to check them (a synchronization per backward step): err[0] the first such index's output
// position, flat over (planes, P, Q) (-1: none), err[1] the index (clamped to int). A backward gives dy
// only to a position inside its window; the host reads and resets the record (check_index_errors).
enum { POOL_ERR_AT, POOL_ERR_INDEX, POOL_ERR_SIZE };

template <class I>
__device__ __forceinline__ void record_outside(int* __restrict__ err, size_t o, I at) {
    if (atomicCAS(&err[POOL_ERR_AT], -1, int(o)) == -1)  // o < 2^31: the launchers' 32-bit limit
        err[POOL_ERR_INDEX] = at < I(-2147483647) ? -2147483647 : at > I(2147483647) ? 2147483647 : int(at);
}

// First output row (column) whose window covers input row h: ceil((h - k + 1) / s), at least 0.
__device__ __forceinline__ int first_window(int h, int k, int s) { return h >= k ? (h - k + s) / s : 0; }
// Last one: floor(h / s), at most P-1 (Q-1).
__device__ __forceinline__ int last_window(int h, int s, int p) { return min(h / s, p - 1); }

// y[pl, oh, ow] = max of the window at (oh*sh, ow*sw) of x[pl]; idx = the flat position h*W+w of its
// first maximum in row-major window order (only a strictly larger value, or a NaN, replaces the
// running maximum: PyTorch's rule, so a window holding NaN gives NaN at its last NaN; the NumPy
// backend's int64 indices). RELU = true pools relu(x) in the same pass (op relu_max_pool2d: y and idx
// exactly those of max_pool2d(relu(x)); a window of values <= 0 gives 0 at its first position).
template <bool RELU>
__global__ void max_pool_fwd(const float* __restrict__ x, float* __restrict__ y, long long* __restrict__ idx,
                             int planes, int h, int w, int p, int q, int kh, int kw, int sh, int sw) {
    const int n = planes * p * q;
    GRID_STRIDE_LOOP(t, n) {
        const int ow = t % q, r = t / q, oh = r % p, pl = r / p;
        const int h0 = oh * sh, w0 = ow * sw;
        const float* __restrict__ plane = x + size_t(pl) * h * w;
        int best_at = h0 * w + w0;
        float best = plane[best_at];
        if (RELU) best = apply_relu(best);
        for (int i = 0; i < kh; ++i) {
            const int row = (h0 + i) * w + w0;
            for (int j = 0; j < kw; ++j) {
                float v = plane[row + j];
                if (RELU) v = apply_relu(v);
                if (v > best || isnan(v)) {
                    best = v;
                    best_at = row + j;
                }
            }
        }
        y[t] = best;
        idx[t] = best_at;
    }
}

// dx[pl, h, w] = sum of dy[pl, oh, ow] over the windows containing (h, w) whose recorded index is
// h*W+w (row-major window order). I: the indices' integer type (int64 from max_pool2d, or int32).
// The element at a window's corner (oh*sh, ow*sw) checks that window's index: one outside the window
// reaches no element and goes into `err`.
template <class I>
__global__ void max_pool_bwd(const float* __restrict__ dy, const I* __restrict__ idx, float* __restrict__ dx,
                             int* __restrict__ err, int planes, int h, int w, int p, int q, int kh, int kw, int sh,
                             int sw) {
    const int n = planes * h * w;
    GRID_STRIDE_LOOP(t, n) {
        const int c = t % w, r = t / w, row = r % h, pl = r / h;
        const int here = row * w + c;
        const size_t base = size_t(pl) * p * q;
        const int oh1 = last_window(row, sh, p), ow0 = first_window(c, kw, sw), ow1 = last_window(c, sw, q);
        float acc = 0.f;
        for (int oh = first_window(row, kh, sh); oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) {
                const size_t o = base + size_t(oh) * q + ow;
                if (idx[o] == I(here)) acc += dy[o];
            }
        dx[t] = acc;
        const int oh = row / sh, ow = c / sw;
        if (oh * sh == row && ow * sw == c && oh < p && ow < q) {  // this element is window (oh, ow)'s corner
            const size_t o = base + size_t(oh) * q + ow;
            const long long d = (long long)idx[o] - here;  // (i, j) = divmod(d, W) lies in the window
            if (d < 0 || d / w >= kh || d % w >= kw) record_outside(err, o, idx[o]);
        }
    }
}

// max_pool_bwd for windows that do not overlap (sh >= kh and sw >= kw), with no integer division:
// one thread per pooled output (pl, oh, ow) writes the cell of dx from its window's corner
// (oh*sh, ow*sw) up to the next window's (the last window row P-1 and column Q-1: through H-1 and
// W-1, so the floor's leftover rows and columns are in the last cells): dy[pl, oh, ow] at the
// recorded index if it lies in the kh x kw window, 0 everywhere else (an index outside its window
// is dropped, as max_pool_bwd drops it, and recorded in `err`). The cells tile the plane, so every dx
// element is written exactly once. Grid: x over ow (covering Q), y over oh and z over planes, both
// grid-stride; the counters are unsigned (P, planes < 2^31, grid strides < 2^26: no wrap), offsets
// within a plane 32-bit (H*W < 2^31), the plane's base 64-bit.
template <class I>
__global__ void max_pool_bwd_disjoint(const float* __restrict__ dy, const I* __restrict__ idx,
                                      float* __restrict__ dx, int* __restrict__ err, int planes, int h, int w, int p,
                                      int q, int kh, int kw, int sh, int sw) {
    const unsigned ow = blockIdx.x * blockDim.x + threadIdx.x;
    if (ow >= unsigned(q)) return;
    const unsigned c0 = ow * unsigned(sw);
    const unsigned cols = ow + 1 == unsigned(q) ? unsigned(w) - c0 : unsigned(sw);
    const unsigned oh_first = blockIdx.y * blockDim.y + threadIdx.y, oh_step = gridDim.y * blockDim.y;
    for (unsigned pl = blockIdx.z * blockDim.z + threadIdx.z; pl < unsigned(planes); pl += gridDim.z * blockDim.z) {
        const size_t out_plane = size_t(pl) * unsigned(p) * unsigned(q);
        float* __restrict__ plane = dx + size_t(pl) * unsigned(h) * unsigned(w);
        for (unsigned oh = oh_first; oh < unsigned(p); oh += oh_step) {
            const size_t o = out_plane + size_t(oh * unsigned(q) + ow);
            const float g = dy[o];
            const I at = idx[o];
            const unsigned r0 = oh * unsigned(sh);
            const unsigned rows = oh + 1 == unsigned(p) ? unsigned(h) - r0 : unsigned(sh);
            unsigned pos = r0 * unsigned(w) + c0;  // h*W+w of the cell's row i, column 0
            bool inside = false;
            for (unsigned i = 0; i < rows; ++i, pos += unsigned(w)) {
                // the column of the cell row that gets g: the index's, if it is in this row of the window
                const long long d = (long long)at - (long long)pos;
                const unsigned hit = i < unsigned(kh) && d >= 0 && d < kw ? unsigned(d) : ~0u;  // j < W < 2^31
                inside |= hit != ~0u;
                float* __restrict__ out = plane + pos;
                for (unsigned j = 0; j < cols; ++j) out[j] = j == hit ? g : 0.f;
            }
            if (!inside) record_outside(err, o, at);
        }
    }
}

// y[pl, oh, ow] = (sum of the window, row-major) / (kh*kw), as the NumPy backend divides.
extern "C" __global__ void avg_pool_fwd(const float* __restrict__ x, float* __restrict__ y, int planes, int h, int w,
                                        int p, int q, int kh, int kw, int sh, int sw) {
    const int n = planes * p * q;
    const float area = float(kh * kw);
    GRID_STRIDE_LOOP(t, n) {
        const int ow = t % q, r = t / q, oh = r % p, pl = r / p;
        const float* __restrict__ win = x + size_t(pl) * h * w + size_t(oh * sh) * w + ow * sw;
        float acc = 0.f;
        for (int i = 0; i < kh; ++i)
            for (int j = 0; j < kw; ++j) acc += win[i * w + j];
        y[t] = acc / area;
    }
}

// dx[pl, h, w] = (sum of dy over the windows containing (h, w)) / (kh*kw); elements no window
// covers (the floor's leftover rows and columns) get 0.
extern "C" __global__ void avg_pool_bwd(const float* __restrict__ dy, float* __restrict__ dx, int planes, int h, int w,
                                        int p, int q, int kh, int kw, int sh, int sw) {
    const int n = planes * h * w;
    const float area = float(kh * kw);
    GRID_STRIDE_LOOP(t, n) {
        const int c = t % w, r = t / w, row = r % h, pl = r / h;
        const float* __restrict__ g = dy + size_t(pl) * p * q;
        const int oh1 = last_window(row, sh, p), ow0 = first_window(c, kw, sw), ow1 = last_window(c, sw, q);
        float acc = 0.f;
        for (int oh = first_window(row, kh, sh); oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) acc += g[oh * q + ow];
        dx[t] = acc / area;
    }
}
