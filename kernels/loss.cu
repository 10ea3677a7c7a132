// The masked per-token MSE of SPEC 7 and the pieces of its PSNR. Sums are
// per-block partials added in block order by the caller, so the result does
// not depend on scheduling.
#include "common.cuh"

// e[n] = mean over the token's P values of (pred − target)²; sq[n] = the sum.
extern "C" __global__ void token_errors(const float* pred, const float* target, float* e, float* sq, int tokens, int p) {
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < tokens; n += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < p; ++k) {
            float d = pred[(uint64_t)n * p + k] - target[(uint64_t)n * p + k];
            s += d * d;
        }
        sq[n] = s;
        e[n] = s / p;
    }
}

// d loss / d pred = g · weight[n] · 2 (pred − target) / P, with weight[n] =
// mask[n] / Σ mask (or 1 / tokens when nothing is masked), computed by the caller.
extern "C" __global__ void masked_mse_backward(const float* pred, const float* target, const float* weight, float* grad,
                                               float g, int tokens, int p) {
    uint64_t total = (uint64_t)tokens * p;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        grad[i] = g * weight[i / p] * 2.0f * (pred[i] - target[i]) / (float)p;
    }
}

// Mean over the middle axis of an outer × n × inner tensor (the token mean pool).
extern "C" __global__ void mean_axis(const float* x, float* y, int outer, int n, int inner) {
    uint64_t total = (uint64_t)outer * inner;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t o = i / inner, c = i % inner;
        float s = 0.0f;
        for (int k = 0; k < n; ++k) s += x[(o * n + k) * inner + c];
        y[i] = s / n;
    }
}

// The mean pool's gradient: every one of the n rows gets g / n.
extern "C" __global__ void mean_axis_backward(const float* g, float* dx, int outer, int n, int inner) {
    uint64_t total = (uint64_t)outer * n * inner;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t c = i % inner, o = i / ((uint64_t)n * inner);
        dx[i] = g[o * inner + c] / (float)n;
    }
}
