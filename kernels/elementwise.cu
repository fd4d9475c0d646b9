// elementwise.cu: ReLU and the other one-thread-per-element kernels.
// Arrays are float32, C-contiguous, n < 2^31 elements (the launchers check); grid-stride loops.
#include "common.cuh"

extern "C" __global__ void relu_fwd(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE_LOOP(i, n) y[i] = fmaxf(x[i], 0.f);
}

// dx = dy where x > 0, else 0 (x may be the ReLU's input or its output: same sign test).
extern "C" __global__ void relu_bwd(const float* __restrict__ dy, const float* __restrict__ x,
                                    float* __restrict__ dx, int n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}
