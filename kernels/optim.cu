// The optimizer over all parameters in one launch: every parameter,
// gradient and moment is one slice of a flat array (offsets in `starts`).
#include "common.cuh"

// Sum of squares per block of the gradient, written to partial[blockIdx.x];
// the host (or a second pass) adds the partials in order.
extern "C" __global__ void grad_sq_partials(const float* g, float* partial, uint64_t n) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    float s = 0.0f;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    buf[threadIdx.x] = s;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// AdamW as torch.optim.AdamW, with the clip factor applied to the gradient:
// w ← w·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
// w ← w − (lr/bc1)·m / (√v/√bc2 + eps).
extern "C" __global__ void adamw_step(float* w, const float* g, float* m, float* v, uint64_t n, float lr, float beta1,
                                      float beta2, float eps, float weight_decay, float bc1, float bc2_sqrt,
                                      float clip) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = g[i] * clip;
        float wi = w[i] * (1.0f - lr * weight_decay);
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - (lr / bc1) * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}
