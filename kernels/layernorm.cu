// Layer norm over the last dimension: one block per row, block-wide sums in
// shared memory (blockDim.x must be a power of two), statistics in float.
#include "common.cuh"

__device__ __forceinline__ float block_sum(float v, float* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    float total = buf[0];
    __syncthreads();
    return total;
}

// y = (x - mean) / sqrt(var + eps) * w + b; saves mean and 1/sigma per row.
extern "C" __global__ void layer_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean,
                                              float* rstd, int rows, int cols, float eps) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (uint64_t)row * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    float mu = block_sum(s, buf) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = xr[c] - mu;
        q += d * d;
    }
    float rs = 1.0f / sqrtf(block_sum(q, buf) / cols + eps);
    float* yr = y + (uint64_t)row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = (xr[c] - mu) * rs * w[c] + b[c];
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}
