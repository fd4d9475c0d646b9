// norm.cu: batch normalization of x (N, C) or (N, C, H, W), forward (train and eval) and backward.
//
// x is seen as (N, C, HW) (HW = 1 for 2-D inputs). One block per channel (grid-stride over
// channels when C > the grid): the block's threads stride over the channel's m = N*HW values by a
// flat index i -> (i / HW, i % HW) (FastDiv), so every thread has work even for 1x1 or 2x2 maps,
// and consecutive threads read consecutive addresses within a sample. Reductions are per-thread
// sums then common.cuh's block_sum (warp shuffles, then one warp): deterministic, no atomics.
// Forward and backward each do their reductions and the elementwise pass in the same launch.
#include "common.cuh"

// Address of value i (0 <= i < n*hw) of channel ch.
__device__ __forceinline__ size_t bn_at(const FastDiv& hw, int channels, int ch, int i) {
    int s, k;
    hw.divmod(i, s, k);
    return (size_t(s) * channels + ch) * hw.d + k;
}

// TRAIN: batch statistics (mean, then the biased variance around it: two passes, no cancellation),
// save_mean / save_invstd = mean, 1/sqrt(var + eps), and, where update_mean / update_var, the
// running statistics in place: r = r * (1 - momentum) + momentum * stat (the variance unbiased by
// m/(m-1)), as PyTorch and the NumPy backend. Eval: the running statistics are the statistics.
// Then y = (x - mean) * invstd (* weight) (+ bias). Absent weight / bias / running arrays are
// dummies the has_* / update_* flags keep unread.
template <bool TRAIN>
__global__ void bn_fwd(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ weight,
                       const float* __restrict__ bias, float* running_mean, float* running_var,
                       float* __restrict__ save_mean, float* __restrict__ save_invstd, int n, int channels, int hw,
                       int has_weight, int has_bias, int update_mean, int update_var, float momentum, float keep,
                       float unbias, float eps) {
    __shared__ float scratch[32];
    const FastDiv hwd(hw);
    const int m = n * hw;
    for (int ch = blockIdx.x; ch < channels; ch += gridDim.x) {  // block-uniform: barriers are safe
        float mean, var;
        if (TRAIN) {
            float acc = 0.f;
            for (int i = threadIdx.x; i < m; i += blockDim.x) acc += x[bn_at(hwd, channels, ch, i)];
            mean = block_sum(acc, scratch) / float(m);
            acc = 0.f;
            for (int i = threadIdx.x; i < m; i += blockDim.x) {
                const float dev = x[bn_at(hwd, channels, ch, i)] - mean;
                acc += dev * dev;
            }
            var = block_sum(acc, scratch) / float(m);
        } else {
            mean = running_mean[ch];
            var = running_var[ch];
        }
        const float invstd = 1.f / sqrtf(var + eps);
        if (threadIdx.x == 0) {
            save_mean[ch] = mean;
            save_invstd[ch] = invstd;
            if (TRAIN && update_mean) running_mean[ch] = running_mean[ch] * keep + momentum * mean;
            if (TRAIN && update_var) running_var[ch] = running_var[ch] * keep + momentum * var * unbias;
        }
        const float w = has_weight ? weight[ch] : 1.f, b = has_bias ? bias[ch] : 0.f;
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const size_t e = bn_at(hwd, channels, ch, i);
            float v = (x[e] - mean) * invstd;
            if (has_weight) v = v * w;
            if (has_bias) v = v + b;
            y[e] = v;
        }
    }
}

// With xhat = (x - mean) * invstd and g = dy * weight (dy without weight):
//   dbias = sum(dy), dweight = sum(dy * xhat) (written when has_weight);
//   training: dx = (g - mean(g) - xhat * mean(g * xhat)) * invstd (the batch statistics depend on x);
//   eval:     dx = g * invstd.
extern "C" __global__ void bn_bwd(const float* __restrict__ dy, const float* __restrict__ x,
                                  const float* __restrict__ weight, const float* __restrict__ save_mean,
                                  const float* __restrict__ save_invstd, float* __restrict__ dx,
                                  float* __restrict__ dweight, float* __restrict__ dbias, int n, int channels, int hw,
                                  int has_weight, int training) {
    __shared__ float scratch[32];
    const FastDiv hwd(hw);
    const int m = n * hw;
    for (int ch = blockIdx.x; ch < channels; ch += gridDim.x) {
        const float mean = save_mean[ch], invstd = save_invstd[ch];
        const float w = has_weight ? weight[ch] : 1.f;
        float gmean = 0.f, gxhat = 0.f;
        if (training || has_weight) {  // block-uniform
            float s1 = 0.f, s2 = 0.f;
            for (int i = threadIdx.x; i < m; i += blockDim.x) {
                const size_t e = bn_at(hwd, channels, ch, i);
                s1 += dy[e];
                s2 += dy[e] * ((x[e] - mean) * invstd);
            }
            const float sum_dy = block_sum(s1, scratch);
            const float sum_dy_xhat = block_sum(s2, scratch);
            if (has_weight && threadIdx.x == 0) {
                dbias[ch] = sum_dy;
                dweight[ch] = sum_dy_xhat;
            }
            gmean = w * sum_dy / float(m);
            gxhat = w * sum_dy_xhat / float(m);
        }
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const size_t e = bn_at(hwd, channels, ch, i);
            const float g = has_weight ? dy[e] * w : dy[e];
            if (training) {
                const float xhat = (x[e] - mean) * invstd;
                dx[e] = (g - gmean - xhat * gxhat) * invstd;
            } else {
                dx[e] = g * invstd;
            }
        }
    }
}
