// optim.cu: SGD (momentum, dampening, Nesterov, weight decay) and Adam updates of ALL parameters
// of a model in ONE launch (multi-tensor apply), in place, with torch.optim's rules as the NumPy
// backend writes them.
//
// The launcher passes tables built once per parameter list (_runtime.tensor_table):
//   ptrs   uint64 (lists, tensors): the address of tensor t of list l at ptrs[l * tensors + t]
//          (SGD: params, grads, momentum buffers; Adam: params, grads, exp_avg, exp_avg_sq);
//   sizes  int (tensors,);
//   chunks int (nchunks, 2): (tensor, first element) of each run of `chunk` elements.
// Block b takes chunks b, b + gridDim.x, ...; its threads stride over the chunk's elements, so
// consecutive threads touch consecutive elements of one tensor (coalesced), tensors of any size
// share the launch, and empty tensors have no chunk.
#include "common.cuh"

// The [begin, end) range and the tensor of chunk `b`.
__device__ __forceinline__ void chunk_range(const int* __restrict__ sizes, const int* __restrict__ chunks, int chunk,
                                            int b, int& t, int& begin, int& end) {
    t = chunks[2 * b];
    begin = chunks[2 * b + 1];
    end = min(begin + chunk, sizes[t]);
}

template <class T>
__device__ __forceinline__ T* table_ptr(const uint64_t* __restrict__ ptrs, int tensors, int list, int t) {
    return reinterpret_cast<T*>(ptrs[size_t(list) * tensors + t]);
}

// d = g (+ weight_decay * p); with momentum: buf = d on the first step, else
// buf = momentum * buf + (1 - dampening) * d; then d = d + momentum * buf (Nesterov) or buf;
// p -= lr * d. Without momentum the buffer list is a stand-in that is never touched.
extern "C" __global__ void sgd_multi(const uint64_t* __restrict__ ptrs, const int* __restrict__ sizes,
                                     const int* __restrict__ chunks, int tensors, int nchunks, int chunk, float lr,
                                     float momentum, float one_minus_dampening, float weight_decay, int use_weight_decay,
                                     int use_momentum, int nesterov, int first_step) {
    for (int b = blockIdx.x; b < nchunks; b += gridDim.x) {
        int t, begin, end;
        chunk_range(sizes, chunks, chunk, b, t, begin, end);
        float* __restrict__ p = table_ptr<float>(ptrs, tensors, 0, t);
        const float* __restrict__ g = table_ptr<const float>(ptrs, tensors, 1, t);
        float* __restrict__ buf = table_ptr<float>(ptrs, tensors, 2, t);
        for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
            const float pi = p[i];
            float d = g[i];
            if (use_weight_decay) d = d + weight_decay * pi;
            if (use_momentum) {
                const float bi = first_step ? d : buf[i] * momentum + one_minus_dampening * d;
                buf[i] = bi;
                d = nesterov ? d + momentum * bi : bi;
            }
            p[i] = pi - lr * d;
        }
    }
}

// Advances Adam's step counter on the device and writes the new step's bias corrections,
// scal[0] = lr / (1 - beta1^step) and scal[1] = sqrt(1 - beta2^step), in float64 like the host
// would: a training step captured as a CUDA graph then replays with the right step every time.
extern "C" __global__ void adam_advance(int* __restrict__ step, float* __restrict__ scal, float lr, float beta1,
                                        float beta2) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const int s = *step + 1;
        *step = s;
        scal[0] = float(double(lr) / (1.0 - pow(double(beta1), double(s))));
        scal[1] = float(sqrt(1.0 - pow(double(beta2), double(s))));
    }
}

// d = g (+ weight_decay * p); m = beta1 * m + (1 - beta1) * d; v = beta2 * v + (1 - beta2) * d^2;
// p -= step_size * m / (sqrt(v) / sqrt(1 - beta2^step) + eps), step_size = lr / (1 - beta1^step),
// with step_size = scal[0] and sqrt(1 - beta2^step) = scal[1] from adam_advance.
extern "C" __global__ void adam_multi(const uint64_t* __restrict__ ptrs, const int* __restrict__ sizes,
                                      const int* __restrict__ chunks, int tensors, int nchunks, int chunk,
                                      const float* __restrict__ scal, float beta1, float one_minus_beta1, float beta2,
                                      float one_minus_beta2, float eps, float weight_decay, int use_weight_decay) {
    const float step_size = scal[0], bc2_sqrt = scal[1];
    for (int b = blockIdx.x; b < nchunks; b += gridDim.x) {
        int t, begin, end;
        chunk_range(sizes, chunks, chunk, b, t, begin, end);
        float* __restrict__ p = table_ptr<float>(ptrs, tensors, 0, t);
        const float* __restrict__ g = table_ptr<const float>(ptrs, tensors, 1, t);
        float* __restrict__ m = table_ptr<float>(ptrs, tensors, 2, t);
        float* __restrict__ v = table_ptr<float>(ptrs, tensors, 3, t);
        for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
            const float pi = p[i];
            float d = g[i];
            if (use_weight_decay) d = d + weight_decay * pi;
            const float mi = m[i] * beta1 + one_minus_beta1 * d;
            const float vi = v[i] * beta2 + one_minus_beta2 * (d * d);
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        }
    }
}
