// The optimizer: AdamW and the squared gradient norm as multi-tensor
// kernels that take a table of device addresses and the flat start of each
// tensor, so every parameter is updated in one launch.
#include "common.cuh"

// AdamW as torch.optim.AdamW for one value, with the clip factor applied to
// the gradient: w ← w·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
// w ← w − (lr/bc1)·m / (√v/√bc2 + eps). Returns the new weight.
__device__ __forceinline__ float adamw_value(float* w, float g, float* m, float* v, float lr, float beta1, float beta2,
                                             float eps, float weight_decay, float bc1, float bc2_sqrt, float clip) {
    float gi = g * clip;
    float wi = *w * (1.0f - lr * weight_decay);
    float mi = beta1 * *m + (1.0f - beta1) * gi;
    float vi = beta2 * *v + (1.0f - beta2) * gi * gi;
    *m = mi;
    *v = vi;
    float wn = wi - (lr / bc1) * mi / (sqrtf(vi) / bc2_sqrt + eps);
    *w = wn;
    return wn;
}

// The tensor holding flat index i of a multi-tensor launch: starts[t] is the
// first flat index of tensor t, starts[count] the total (binary search).
__device__ __forceinline__ int multi_tensor_of(const uint64_t* starts, int count, uint64_t i) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (starts[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// AdamW over every parameter in one launch: table[5t .. 5t+3] hold the device
// addresses of tensor t's weight, gradient and two moments, and table[5t+4]
// that of the weight's bf16 copy (0 when none is kept), rewritten from the
// new weight; the update is adamw_value's.
// The clip factor is read from the device (clip[1], as clip_factor writes
// it); when it is NaN (the gradient norm was not finite) nothing changes, so
// a diverged step never reaches the weights even though the host learns of
// it only later.
extern "C" __global__ void adamw_multi(const uint64_t* table, const uint64_t* starts, int count, float lr,
                                       float beta1, float beta2, float eps, float weight_decay, float bc1,
                                       float bc2_sqrt, const float* clip_norm) {
    float clip = clip_norm[1];
    if (clip != clip) return;
    uint64_t total = starts[count];
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        int t = multi_tensor_of(starts, count, i);
        uint64_t j = i - starts[t];
        float* w = (float*)table[5 * t];
        const float* g = (const float*)table[5 * t + 1];
        float* m = (float*)table[5 * t + 2];
        float* v = (float*)table[5 * t + 3];
        uint16_t* w16 = (uint16_t*)table[5 * t + 4];
        float wn = adamw_value(w + j, g[j], m + j, v + j, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, clip);
        if (w16) w16[j] = to_bf16(wn);
    }
}

// Sum of squares of every gradient in one launch (table[t] = the address of
// gradient t), as per-block partials added in block order by the caller.
extern "C" __global__ void grad_sq_multi(const uint64_t* table, const uint64_t* starts, int count, float* partial) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    uint64_t total = starts[count];
    float s = 0.0f;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        int t = multi_tensor_of(starts, count, i);
        float gi = ((const float*)table[t])[i - starts[t]];
        s += gi * gi;
    }
    block_tree_sum(s, buf, partial);
}

// The global gradient norm and PyTorch's clip factor from grad_sq_multi's
// partials, on one thread (the partials added in order, in double):
// out[0] = ‖g‖, out[1] = max_norm / (‖g‖ + 1e−6) when that is below 1, else
// 1, and NaN when the norm is not finite (adamw_multi then skips the step).
extern "C" __global__ void clip_factor(const float* partial, int blocks, double max_norm, float* out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int k = 0; k < blocks; ++k) s += (double)partial[k];
    double norm = sqrt(s);
    double coef = max_norm / (norm + 1e-6);
    bool finite = norm == norm && norm <= 1.7976931348623157e308;
    out[0] = (float)norm;
    out[1] = finite ? (float)(coef < 1.0 ? coef : 1.0) : __uint_as_float(0x7fc00000u);
}
